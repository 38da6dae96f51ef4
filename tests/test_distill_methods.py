"""``--distill-method`` past plain SFT, against a loopback trainer that takes OpenAI's job API:
preference pairs (``dpo``, ``sft+dpo``) and reinforcement prompts (``sft+rl``) written and
checked in OpenAI's shapes, jobs in the API's method shape with the second stage on the first
stage's model, a rerun that starts nothing new, and the SFT model on the holdout as ``sft``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from scripted_server import ScriptedServer

from distill_shapes.methods import parse_method
from distill_shapes.preference import parse_preference_file
from distill_shapes.reinforcement import parse_grader, parse_reinforcement_file
from distill_shapes.training import parse_training_file

CASES = 40


def _suite(grader: str = "{type: string_check, operation: eq}") -> str:
    lines = [
        "name: codes",
        "prompt:",
        "  system: Reply with the code.",
        '  user: "Which code goes with item {{ n }}?"',
        "graders:",
        f"  - {grader}",
        "cases:",
    ]
    lines += [f"  - {{id: i{n:02d}, vars: {{n: {n}}}, reference: ZEBRA-7}}" for n in range(CASES)]
    return "\n".join(lines) + "\n"


def _answer(model: str, messages: list[dict[str, Any]]) -> str:
    """The teacher is right, the student wrong; the SFT model (one ``ft:``) is still wrong, and
    the model trained from it (two) right."""
    if model == "big" or model.count("ft:") >= 2:
        return "ZEBRA-7"
    return "ZEBRA-8" if model.startswith("ft:") else "I do not know."


@pytest.fixture
def remote() -> Iterator[ScriptedServer]:
    with ScriptedServer(_answer) as srv:
        yield srv


def _project(pytester: pytest.Pytester, remote: ScriptedServer, *extra: str) -> pytest.Pytester:
    pytester.makeini(
        "\n".join(
            [
                "[pytest]",
                "distill_teacher_model = big",
                f"distill_teacher_endpoint = {remote.base_url}",
                "distill_student_model = small",
                f"distill_student_endpoint = {remote.base_url}",
                "distill_holdout = 0.5",
                "distill_poll_interval = 0",
                *extra,
                *(
                    []
                    if any("distill_gate" in e for e in extra)
                    else ["distill_gate = teacher >= 0.5"]
                ),
            ]
        )
        + "\n"
    )
    pytester.makefile(".eval.yaml", codes=_suite())
    return pytester


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.delenv("CI", raising=False)


def _jobs(remote: ScriptedServer) -> list[dict[str, Any]]:
    return list(remote.api.jobs.values())


def _sampled(remote: ScriptedServer) -> list[Any]:
    return [b for b in remote.chat_requests() if "temperature" in b]


def test_sft_then_dpo_trains_on_the_sft_models_failing_samples(
    pytester: pytest.Pytester, remote: ScriptedServer
) -> None:
    project = _project(
        pytester,
        remote,
        "distill_method = sft+dpo",
        "distill_pair_samples = 2",
        "distill_pair_temperature = 0.7",
        "distill_beta = 0.2",
        "distill_n_epochs = 2",
        "distill_gate = superior(finetuned, sft, margin=0)",
    )
    result = project.runpytest("--distill", "--distill-report=report.json")
    out = result.stdout.str()
    assert result.ret == 0, out
    first, second = _jobs(remote)
    assert first["model"] == "small"
    assert first["method"] == {
        "type": "supervised",
        "supervised": {"hyperparameters": {"n_epochs": 2}},
    }
    # The second stage starts from the first stage's model, in OpenAI's DPO method shape.
    assert second["model"] == first["fine_tuned_model"]
    assert second["method"] == {
        "type": "dpo",
        "dpo": {"hyperparameters": {"n_epochs": 2, "beta": 0.2}},
    }
    assert parse_method(second["method"]).type == "dpo"
    parse_training_file(remote.api.contents[first["training_file"]])
    pairs = parse_preference_file(remote.api.contents[second["training_file"]])
    train = CASES - len([r for r in remote.chat_requests() if r["model"] == "small"])
    # Both samples failed on every train case, alike: one pair per case, the duplicate dropped.
    assert len(pairs) == train
    assert {(p.chosen.content, p.rejected.content) for p in pairs} == {("ZEBRA-7", "ZEBRA-8")}
    assert pairs[0].messages[0].role == "system"
    # The samples: the SFT model, at the temperature, two per train case.
    sampled = _sampled(remote)
    assert len(sampled) == 2 * train
    assert {(b["model"], b["temperature"]) for b in sampled} == {(first["fine_tuned_model"], 0.7)}

    report = json.loads((project.path / "report.json").read_text())
    training = report["training"]
    assert training["method"] == "sft+dpo"
    assert [s["stage"] for s in training["stages"]] == ["sft", "dpo"]
    assert [s["job_id"] for s in training["stages"]] == [first["id"], second["id"]]
    assert training["stages"][1]["base_model"] == first["fine_tuned_model"]
    assert training["fine_tuned_model"] == second["fine_tuned_model"]
    labels = {(p["a"], p["b"]): p for p in report["paired"]["pairs"]}
    assert labels[("finetuned", "sft")]["mean_difference"] == 1.0
    assert report["gate"]["passed"] is True
    assert "distill method sft+dpo:" in out and "stage 2 dpo:" in out
    # The lineage manifest: case -> teacher completion -> rejected sample -> pair line.
    manifest = json.loads(
        (project.path / training["stages"][1]["manifest"]).read_text(encoding="utf-8")
    )
    line = manifest["lines"][0]
    assert manifest["method"] == "dpo" and line["line"] == 1
    assert line["case"].startswith("codes::") and line["completion_id"]
    assert line["rejected_from"] == "sft sample 1" and line["rejected_completion_id"]
    state = json.loads((project.path / ".distill" / "state.json").read_text())
    stages = state["stages"]["sft+dpo"]
    assert stages["dpo"]["after"] == first["id"] and stages["sft"]["job_id"] == first["id"]

    # A rerun finds both jobs: nothing created, nothing sampled again.
    before = len(sampled)
    again = project.runpytest("--distill")
    assert again.ret == 0, again.stdout.str()
    assert len(_jobs(remote)) == 2
    assert len(_sampled(remote)) == before
    again.stdout.fnmatch_lines(["*stage 2 (dpo) trains on .distill/datasets/*again*"])


def test_a_rerun_after_the_first_stage_only_runs_the_second(
    pytester: pytest.Pytester, remote: ScriptedServer
) -> None:
    project = _project(pytester, remote, "distill_method = sft+dpo", "distill_pair_samples = 1")
    assert project.runpytest("--distill", "--distill-method=sft").ret == 0
    [sft_job] = _jobs(remote)
    result = project.runpytest("--distill")
    assert result.ret == 0, result.stdout.str()
    first, second = _jobs(remote)
    assert first is sft_job  # the SFT job of the run before, found by its key
    assert second["model"] == sft_job["fine_tuned_model"]
    result.stdout.fnmatch_lines([f"*resuming job {sft_job['id']}*"])


def test_dpo_pairs_the_teachers_passing_answers_with_the_students_failing_ones(
    pytester: pytest.Pytester, remote: ScriptedServer
) -> None:
    project = _project(pytester, remote)
    result = project.runpytest("--distill", "--distill-method=dpo", "--distill-report=r.json")
    assert result.ret == 0, result.stdout.str()
    [job] = _jobs(remote)
    assert job["model"] == "small"
    assert job["method"] == {"type": "dpo", "dpo": {"hyperparameters": {}}}
    pairs = parse_preference_file(remote.api.contents[job["training_file"]])
    # The student ran the train split too: each of its failing answers makes a pair.
    student = [b for b in remote.chat_requests() if b["model"] == "small"]
    holdout = [b for b in remote.chat_requests() if b["model"] == job["fine_tuned_model"]]
    assert len(student) == CASES and len(pairs) == CASES - len(holdout)
    assert {(p.chosen.content, p.rejected.content) for p in pairs} == {
        ("ZEBRA-7", "I do not know.")
    }
    training = json.loads((project.path / "r.json").read_text())["training"]
    assert training["method"] == "dpo" and [s["stage"] for s in training["stages"]] == ["dpo"]
    manifest = json.loads((project.path / training["manifest"]).read_text())
    assert {line["rejected_from"] for line in manifest["lines"]} == {"student"}


def test_too_few_pairs_is_exit_7_with_the_count_and_the_fix(
    pytester: pytest.Pytester, remote: ScriptedServer
) -> None:
    remote.answer = lambda model, messages: "ZEBRA-7"  # the student passes: nothing to pair
    project = _project(pytester, remote, "distill_method = dpo")
    result = project.runpytest("--distill")
    assert result.ret == 7
    result.stdout.fnmatch_lines(
        ["*distill: 0 preference pairs, at least 10 are needed (*no failing answer*); add *"]
    )
    assert not _jobs(remote)


def test_sft_then_rl_sends_prompts_and_the_suites_grader(
    pytester: pytest.Pytester, remote: ScriptedServer
) -> None:
    project = _project(pytester, remote, "distill_method = sft+rl")
    result = project.runpytest("--distill")
    assert result.ret == 0, result.stdout.str()
    first, second = _jobs(remote)
    assert second["model"] == first["fine_tuned_model"]
    method = parse_method(second["method"])
    assert method.type == "reinforcement"
    assert second["method"]["reinforcement"]["grader"]["type"] == "string_check"
    assert parse_grader(second["method"]["reinforcement"]["grader"]).calculate_output is None
    prompts = parse_reinforcement_file(remote.api.contents[second["training_file"]])
    assert prompts[0].item["reference"] == "ZEBRA-7" and "n" in prompts[0].item
    assert prompts[0].messages[-1].role == "user"


def test_rl_on_openai_refuses_a_grader_it_does_not_take_before_any_call(
    pytester: pytest.Pytester, remote: ScriptedServer
) -> None:
    project = _project(pytester, remote, "distill_method = sft+rl")
    project.makefile(".eval.yaml", codes=_suite("{type: contains}"))
    result = project.runpytest("--distill", "--distill-endpoint=student=openai")
    assert result.ret != 0
    result.stdout.fnmatch_lines(
        [
            "*distill_method sft+rl: grader 'contains' (type contains) is not one OpenAI's "
            "reinforcement fine-tuning takes*distill_trainer_endpoint = local*"
        ]
    )
    assert not remote.chat_requests()


def test_a_bad_method_names_the_value_and_the_choices(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ndistill_method = ppo\n")
    result = pytester.runpytest("--distill")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*ini distill_method: 'ppo' is not a training method; use one of sft, dpo, sft+dpo, "
            "sft+rl*"
        ]
    )
    flag = pytester.runpytest("--distill-method=ppo")
    assert flag.ret == pytest.ExitCode.USAGE_ERROR
    flag.stderr.fnmatch_lines(["*--distill-method*invalid choice: 'ppo'*sft+rl*"])
