"""``pytest --distill`` end to end: a scripted teacher on loopback, a tiny student on the
embedded server, real LoRA training, the fine-tuned student evaluated on the holdout."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scripted_server import ScriptedServer

ANSWER = "ZEBRA-7"
CASES = 30


def _teacher(model: str, messages: list[dict[str, Any]]) -> str:
    # The teacher misses every seventh item, so not every train case becomes an example.
    item = int(messages[-1]["content"].rsplit(" ", 1)[1].rstrip("?"))
    return "zebra?" if item % 7 == 3 else ANSWER


def suite(cases: int = CASES) -> str:
    lines = [
        "name: codes",
        "prompt:",
        "  system: Reply with the code.",
        '  user: "Which code goes with item {{ n }}?"',
        "graders:",
        "  - {type: string_check, operation: eq}",
        "cases:",
    ]
    lines += [f"  - {{id: i{n:02d}, vars: {{n: {n}}}, reference: {ANSWER}}}" for n in range(cases)]
    return "\n".join(lines) + "\n"


@pytest.fixture
def teacher_server() -> Iterator[ScriptedServer]:
    with ScriptedServer(_teacher) as srv:
        yield srv


def ini(teacher_url: str, tiny: Path, **extra: str) -> str:
    lines = [
        "[pytest]",
        "distill_teacher_model = big",
        f"distill_teacher_endpoint = {teacher_url}",
        "distill_student_model = tiny",
        "distill_student_endpoint = local",
        f"distill_local_models = tiny = {tiny}",
        "distill_student_params = temperature=0 max_tokens=8",
        "distill_finetuned_params = temperature=0 max_tokens=8",
        "distill_n_epochs = 6",
        "distill_batch_size = 4",
        "distill_learning_rate_multiplier = 20",
        "distill_poll_interval = 0.2",
        "distill_holdout = 0.2",
    ]
    lines += [f"distill_{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def distill_project(
    pytester: pytest.Pytester, teacher_server: ScriptedServer, tiny_model: Path
) -> pytest.Pytester:
    pytester.makeini(ini(teacher_server.base_url, tiny_model))
    pytester.makefile(".eval.yaml", codes=suite())
    return pytester


def local_api(root: Path, tiny: Path) -> Any:
    """A server on the project's own data directory, to count what the runs left there."""
    from distill_server import LocalServer

    return LocalServer(root / ".distill" / "server", models={"tiny": tiny})


def _run_the_printed_export_command(lines: list[str], target: Path) -> None:
    import shlex

    from distill_server import cli

    [line] = [x for x in lines if x.startswith("distill: serve it elsewhere: ")]
    command = shlex.split(line.split(": ", 2)[2].split(" (or ")[0])
    assert command[0] == "distill-server"
    argv = [str(target) if arg == "DIR" else arg for arg in command[1:]]
    assert cli.main(argv) == 0
    assert (target / "adapter_model.safetensors").is_file()


def _train_split() -> tuple[int, int]:
    from pytest_distill.evals.cases import split_of

    train = [n for n in range(CASES) if split_of(f"codes::i{n:02d}", 0.2) == "train"]
    return len(train), sum(1 for n in train if n % 7 != 3)


def test_distill_trains_on_passing_teacher_outputs_and_gates_the_finetuned_student(
    distill_project: pytest.Pytester, tiny_model: Path
) -> None:
    result = distill_project.runpytest(
        "--distill",
        "--distill-report=report.json",
        "--distill-gate",
        "finetuned >= student + 0.5 and finetuned.prompt_tokens <= student.prompt_tokens",
    )
    result.stdout.fnmatch_lines(
        [
            "distill: wrote * examples to *train.jsonl*",
            "distill: started job ftjob-* on local for tiny",
            "distill: fine-tuned model ft:tiny:local:distill:*",
            "distill: serve it elsewhere: distill-server export ft:tiny:local:distill:* "
            "--data-dir */.distill/server --to DIR --format peft (or merged, ollama)",
            "holdout (the gate's cases):",
            "*teacher*",
            "*student*",
            "*finetuned*",
            "gate on holdout cases: finetuned >= student + 0.5 and *",
            "*ok   finetuned >= student + 0.5: *",
            "gate passed on holdout cases (exit code 0)",
        ]
    )
    assert result.ret == 0, result.stdout.str()
    _run_the_printed_export_command(result.stdout.lines, distill_project.path / "student")
    train_cases, passing = _train_split()
    [dataset] = (distill_project.path / ".distill" / "datasets").glob("*/train.jsonl")
    lines = [json.loads(x) for x in dataset.read_text().splitlines()]
    assert len(lines) == passing < train_cases
    # The student's prompt, the teacher's answer.
    assert lines[0]["messages"][0] == {"role": "system", "content": "Reply with the code."}
    assert lines[0]["messages"][-1] == {"role": "assistant", "content": ANSWER}
    manifest = json.loads((dataset.parent / "manifest.json").read_text())
    assert len(manifest["lines"]) == passing
    assert all(line["batch"] is None for line in manifest["lines"])  # live teacher calls
    assert manifest["training"]["status"] == "succeeded"
    assert manifest["training"]["fine_tuned_model"].startswith("ft:tiny:local:distill:")
    report = json.loads((distill_project.path / "report.json").read_text())
    finetuned = [i for i in report["items"] if i["role"] == "finetuned"]
    assert finetuned and all(i["split"] == "holdout" for i in finetuned)
    # The lineage, and the loss curve from the metrics events seen while following the job.
    lineage = report["training"]
    assert lineage["sha256"] == manifest["sha256"] and lineage["examples"] == passing
    assert lineage["job_id"] == manifest["training"]["job_id"]
    assert lineage["file_id"] == manifest["training"]["file_id"]
    assert lineage["fine_tuned_model"] == manifest["training"]["fine_tuned_model"]
    steps = [m["step"] for m in lineage["metrics"]]
    assert steps and steps == sorted(set(steps))
    assert all(isinstance(m["train_loss"], float) for m in lineage["metrics"])

    # A plain run afterwards evaluates the fine-tuned model too, from .distill/state.json.
    again = distill_project.runpytest("-k", "finetuned")
    again.stdout.fnmatch_lines(["*finetuned*"])
    assert again.parseoutcomes().get("passed", 0) + again.parseoutcomes().get("failed", 0) == len(
        finetuned
    )


def test_second_distill_run_reuses_the_job_and_the_upload(
    distill_project: pytest.Pytester, tiny_model: Path
) -> None:
    distill_project.runpytest("--distill")
    second = distill_project.runpytest("--distill")
    second.stdout.fnmatch_lines(["distill: resuming job ftjob-* (succeeded)"])
    with local_api(distill_project.path, tiny_model) as server:
        import openai

        client = openai.OpenAI(base_url=server.base_url, api_key="local")
        assert len(client.fine_tuning.jobs.list().data) == 1
        assert len(client.files.list(purpose="fine-tune").data) == 1


def test_a_job_the_trainer_lost_is_started_again(
    distill_project: pytest.Pytester, tiny_model: Path
) -> None:
    first = distill_project.runpytest("--distill")
    # The embedded server's data is deleted; the project's state still names the old job.
    shutil.rmtree(distill_project.path / ".distill" / "server")
    again = distill_project.runpytest("--distill")
    assert again.ret == first.ret != 7, again.stdout.str()
    again.stdout.fnmatch_lines(
        [
            "distill: the trainer no longer knows job ftjob-*; starting over",
            "distill: uploaded *",
            "distill: started job ftjob-* on local for tiny",
        ]
    )


def test_no_wait_starts_the_job_and_the_next_run_finishes_it(
    distill_project: pytest.Pytester,
) -> None:
    # With a gate, the untrained student's low scores are measurements, not failures.
    first = distill_project.runpytest(
        "--distill", "--distill-no-wait", "--distill-gate=teacher >= 0.5"
    )
    first.stdout.fnmatch_lines(
        ["*the gate is deferred: run `pytest --distill` again to follow the job*"]
    )
    assert first.ret == pytest.ExitCode.OK
    state = json.loads((distill_project.path / ".distill" / "state.json").read_text())
    [job] = state["jobs"].values()
    second = distill_project.runpytest("--distill")
    second.stdout.fnmatch_lines([f"distill: resuming job {job['job_id']} *", "*finetuned*"])


def test_fewer_than_ten_examples_stop_with_the_reason_and_exit_code_7(
    pytester: pytest.Pytester, teacher_server: ScriptedServer, tiny_model: Path
) -> None:
    pytester.makeini(ini(teacher_server.base_url, tiny_model))
    pytester.makefile(".eval.yaml", codes=suite(8))
    result = pytester.runpytest("--distill")
    assert result.ret == 7
    result.stdout.fnmatch_lines(
        [
            "distill: * training examples, at least 10 are needed (* train-split teacher cases passed*"
        ]
    )
    assert not (pytester.path / ".distill" / "datasets").exists()


def test_unreachable_trainer_is_one_line_and_writes_no_half_file(
    distill_project: pytest.Pytester, teacher_server: ScriptedServer, tiny_model: Path
) -> None:
    distill_project.makeini(
        ini(
            teacher_server.base_url,
            tiny_model,
            trainer_endpoint="http://127.0.0.1:9/v1",
            max_retries="0",
        )
    )
    result = distill_project.runpytest("--distill")
    assert result.ret == 7
    result.stdout.fnmatch_lines(
        ["distill: the trainer endpoint http://127.0.0.1:9/v1 is unreachable (APIConnectionError*"]
    )
    result.stdout.no_fnmatch_line("*Traceback*")
    leftovers = [p for p in (distill_project.path / ".distill").rglob(".*") if p.is_file()]
    assert leftovers == []


def test_a_job_the_trainer_fails_ends_the_session_with_its_error(
    distill_project: pytest.Pytester, teacher_server: ScriptedServer, tiny_model: Path
) -> None:
    # The student's base is a model directory without weights: the job is created, then fails.
    broken = distill_project.mkdir("broken-model")
    (broken / "config.json").write_text("{}")
    distill_project.makeini(
        ini(teacher_server.base_url, tiny_model).replace(
            f"distill_local_models = tiny = {tiny_model}",
            f"distill_local_models =\n    tiny = {tiny_model}\n    broken = {broken}",
        )
    )
    result = distill_project.runpytest(
        "--distill", "--distill-roles=teacher", "--distill-model", "student=broken"
    )
    assert result.ret == 7
    result.stdout.fnmatch_lines(["distill: fine-tuning job ftjob-* failed: *(exit code 7)"])
    result.stdout.no_fnmatch_line("*Traceback*")


@pytest.fixture
def standalone_trainer(tiny_model: Path, tmp_path: Path) -> Iterator[str]:
    """``distill-server`` in its own process: it outlives the pytest sessions that use it."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distill_server",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path / "srv"),
            "--model",
            f"tiny={tiny_model}",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        banner = server.stdout.readline()  # type: ignore[union-attr]
        yield banner.split(" serving on ")[1].split()[0]
    finally:
        server.terminate()
        server.wait(timeout=30)
        server.stdout.close()  # type: ignore[union-attr]


def _follow_in_subprocess(
    pytester: pytest.Pytester,
    teacher_url: str,
    tiny: Path,
    trainer_url: str,
    epochs: int,
    log: Path,
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """Start ``pytest --distill`` in a subprocess; return it once its job exists."""
    pytester.makeini(
        ini(teacher_url, tiny)
        .replace("distill_student_endpoint = local", f"distill_student_endpoint = {trainer_url}")
        .replace("distill_n_epochs = 6", f"distill_n_epochs = {epochs}")
    )
    pytester.makefile(".eval.yaml", codes=suite())
    state = pytester.path / ".distill" / "state.json"
    with log.open("w") as output:
        run = pytester.popen(
            [sys.executable, "-m", "pytest", "--distill", "-p", "no:cacheprovider"],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (state.exists() and _job_id(state)):
        time.sleep(0.2)
    job_id = _job_id(state)
    assert job_id, "the run never started a job:\n" + log.read_text()
    return run, job_id, state


def test_a_killed_run_resumes_the_same_job(
    pytester: pytest.Pytester,
    teacher_server: ScriptedServer,
    tiny_model: Path,
    tmp_path: Path,
    standalone_trainer: str,
) -> None:
    """The trainer runs on its own (``distill-server``); the pytest session following it dies."""
    first, job_id, state = _follow_in_subprocess(
        pytester,
        teacher_server.base_url,
        tiny_model,
        standalone_trainer,
        20,
        tmp_path / "first.log",
    )
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = pytester.runpytest("--distill")
    second.stdout.fnmatch_lines([f"distill: resuming job {job_id} *", "*finetuned*"])
    assert _job_id(state) == job_id


def test_a_job_cancelled_while_followed_ends_the_session_with_exit_code_7(
    pytester: pytest.Pytester,
    teacher_server: ScriptedServer,
    tiny_model: Path,
    tmp_path: Path,
    standalone_trainer: str,
) -> None:
    import openai

    log = tmp_path / "run.log"
    run, job_id, _ = _follow_in_subprocess(
        pytester, teacher_server.base_url, tiny_model, standalone_trainer, 50, log
    )
    with openai.OpenAI(base_url=standalone_trainer, api_key="local") as client:
        client.fine_tuning.jobs.cancel(job_id)
    assert run.wait(timeout=120) == 7
    output = log.read_text()
    assert f"distill: fine-tuning job {job_id} cancelled: " in output
    assert "Traceback" not in output


def _job_id(state: Path) -> str | None:
    try:
        jobs = json.loads(state.read_text()).get("jobs", {})
    except ValueError:
        return None
    return next((j.get("job_id") for j in jobs.values() if j.get("job_id")), None)


def test_under_xdist_distill_evaluates_the_finetuned_student_in_the_same_session(
    distill_project: pytest.Pytester,
) -> None:
    pytest.importorskip("xdist")
    result = distill_project.runpytest(
        "-n", "2", "--distill", "--distill-report=report.json",
        "--distill-gate", "finetuned >= student + 0.5",
    )  # fmt: skip
    result.stdout.fnmatch_lines(
        [
            "distill: fine-tuned model ft:tiny:local:distill:*",
            "gate passed on holdout cases (exit code 0)",
        ]
    )
    assert result.ret == 0, result.stdout.str()
    report = json.loads((distill_project.path / "report.json").read_text())
    finetuned = [i for i in report["items"] if i["role"] == "finetuned"]
    held_out = [i for i in report["items"] if i["role"] == "student"]
    assert sorted(i["nodeid"].replace("[finetuned]", "") for i in finetuned) == sorted(
        i["nodeid"].replace("[student]", "") for i in held_out
    )
