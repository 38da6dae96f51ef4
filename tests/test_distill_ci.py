"""``pytest --distill`` in CI: checked before the first paid call, never trained on a silent
subset, a job found after a 5xx, ``--no-wait`` that defers the gate, Ctrl-C within seconds.

The trainer is the scripted server's fine-tuning API (files, jobs listed by metadata), so these
run without a model; ``test_distill.py`` covers the embedded trainer.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scripted_server import ScriptedServer
from test_distill import ANSWER, suite

RUN_ARGS = ("--distill", "--distill-record-mode=once", "-p", "no:cacheprovider")


def _answer(model: str, messages: list[dict[str, Any]]) -> str:
    return "no idea" if model == "small" else ANSWER  # the student fails, the teacher passes


@pytest.fixture
def trainer() -> Iterator[ScriptedServer]:
    with ScriptedServer(_answer) as srv:
        yield srv


def _ini(url: str, **extra: str) -> str:
    lines = [
        "[pytest]",
        "distill_teacher_model = big",
        f"distill_teacher_endpoint = {url}",
        "distill_student_model = small",
        f"distill_student_endpoint = {url}",
        "distill_holdout = 0.2",
        "distill_poll_interval = 0",
    ]
    return "\n".join(lines + [f"distill_{k} = {v}" for k, v in extra.items()]) + "\n"


@pytest.fixture
def codes(pytester: pytest.Pytester, trainer: ScriptedServer) -> pytest.Pytester:
    pytester.makeini(_ini(trainer.base_url))
    pytester.makefile(".eval.yaml", codes=suite())
    return pytester


def _paths(server: ScriptedServer, method: str, prefix: str) -> list[str]:
    return [p for m, p, _ in server.requests if m == method and p.startswith(prefix)]


# --- item 9 and 12: checked at start-up, before any model call ---------------------------------


def test_distill_without_a_student_model_stops_before_any_model_call(
    codes: pytest.Pytester, trainer: ScriptedServer
) -> None:
    codes.makeini(_ini(trainer.base_url).replace("distill_student_model = small\n", ""))
    result = codes.runpytest("--distill")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --distill: the student role has no model to fine-tune; set ini distill_student_model*"
        ]
    )
    assert trainer.requests == []


def test_distill_without_the_trainers_key_stops_before_any_model_call(
    codes: pytest.Pytester, trainer: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("DISTILL_TRAINER_API_KEY", raising=False)
    codes.makeini(_ini(trainer.base_url, trainer_endpoint="openai"))
    result = codes.runpytest("--distill")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --distill: no API key for the trainer endpoint openai; *"])
    assert trainer.requests == []


def test_distill_with_an_unwritable_output_folder_stops_before_any_model_call(
    codes: pytest.Pytester, trainer: ScriptedServer
) -> None:
    (codes.path / ".distill").write_text("a file where the folder goes")
    result = codes.runpytest("--distill")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: --distill: cannot write to *.distill (*); make it writable"]
    )
    assert trainer.requests == []


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("n_epochs", "51", "a whole number from 1 to 50, or auto"),
        ("n_epochs", "0", "a whole number from 1 to 50, or auto"),
        ("batch_size", "257", "a whole number from 1 to 256, or auto"),
        ("learning_rate_multiplier", "0", "a number greater than 0, or auto"),
        ("learning_rate_multiplier", "inf", "a number greater than 0, or auto"),
        ("seed", "2147483648", "a whole number from 0 to 2147483647"),
        ("seed", "-1", "a whole number from 0 to 2147483647"),
        ("suffix", "my model", "1 to 64 characters, and a model name keeps to *"),
        ("suffix", "x" * 65, "1 to 64 characters, and a model name keeps to *"),
    ],
)
def test_training_settings_outside_the_apis_ranges_stop_pytest_at_start_up(
    codes: pytest.Pytester, trainer: ScriptedServer, key: str, value: str, allowed: str
) -> None:
    codes.makeini(_ini(trainer.base_url, **{key: value}))
    result = codes.runpytest("--distill")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: ini distill_{key}: '{value}' is not valid; the fine-tuning API takes {allowed}"]
    )
    assert trainer.requests == []


def test_training_settings_inside_the_apis_ranges_reach_the_job(
    codes: pytest.Pytester, trainer: ScriptedServer
) -> None:
    codes.makeini(
        _ini(
            trainer.base_url, n_epochs="50", batch_size="auto", seed="2147483647", suffix="ci-run_1"
        )
    )
    result = codes.runpytest("--distill")
    result.stdout.fnmatch_lines(["distill: fine-tuned model ft:small:scripted:ci-run_1:*"])
    [job] = trainer.api.jobs.values()
    assert job["method"]["supervised"]["hyperparameters"] == {"n_epochs": 50}
    assert (job["seed"], job["fine_tuned_model"].split(":")[3]) == (2147483647, "ci-run_1")


# --- item 3: a selection never silently changes what is trained --------------------------------


@pytest.mark.parametrize(
    "selection",
    [
        ["-k", "i0"],
        ["--deselect", "codes.eval.yaml::i05[teacher]"],
        ["codes.eval.yaml::i05[teacher]"],
    ],
)
def test_a_selection_that_leaves_teacher_cases_out_is_refused_at_collection(
    codes: pytest.Pytester, trainer: ScriptedServer, selection: list[str]
) -> None:
    result = codes.runpytest("--distill", *selection)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --distill: the selection leaves * of * train-split teacher cases out (-k, -m, "
            "--lf, --deselect, node ids or --distill-roles), and training on a subset changes "
            "the data and starts a new job; run them all, or pass --distill-allow-subset "
            "(ini distill_allow_subset)"
        ]
    )
    assert trainer.requests == []  # not one model call was made


def test_under_xdist_a_selection_that_leaves_teacher_cases_out_stops_before_the_upload(
    codes: pytest.Pytester, trainer: ScriptedServer
) -> None:
    # The controller collects nothing: it finds out when the workers' results come back.
    result = codes.runpytest("--distill", "-n", "2", "--deselect", "codes.eval.yaml::i05[teacher]")
    assert result.ret == 7
    result.stdout.fnmatch_lines(["distill: 1 of * train-split teacher cases did not run (-k, *"])
    assert _paths(trainer, "POST", "/v1/files") == []


def test_distill_roles_without_the_teacher_is_a_subset_too(
    codes: pytest.Pytester, trainer: ScriptedServer
) -> None:
    result = codes.runpytest("--distill", "--distill-roles=student")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --distill: the selection leaves 2? of 2? train-split *"])
    assert trainer.requests == []


def test_a_selection_too_small_to_train_is_refused_at_collection(
    codes: pytest.Pytester, trainer: ScriptedServer
) -> None:
    result = codes.runpytest("--distill", "--distill-allow-subset", "-k", "i0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --distill: the selection keeps ? train-split teacher cases, so at most ? "
            "training examples, and training needs at least 10; select more cases (widen -k / "
            "-m, drop --deselect or node ids)"
        ]
    )
    assert trainer.requests == []


def test_allow_subset_trains_on_what_ran(codes: pytest.Pytester, trainer: ScriptedServer) -> None:
    result = codes.runpytest(
        "--distill", "--deselect", "codes.eval.yaml::i05[teacher]", "--distill-allow-subset"
    )
    result.stdout.fnmatch_lines(
        ["distill: fine-tuned model ft:small:scripted:distill:ftjob-* (job *)"]
    )
    assert len(_paths(trainer, "POST", "/v1/files")) == 1


def test_fine_tuned_items_do_not_run_other_plugins_collection_hooks_again(
    codes: pytest.Pytester, trainer: ScriptedServer
) -> None:
    codes.makeconftest(
        """
        CALLS = []

        def pytest_collection_modifyitems(items):
            CALLS.append(len(items))

        def pytest_terminal_summary(terminalreporter):
            terminalreporter.write_line(f"modifyitems calls: {CALLS}")
        """
    )
    result = codes.runpytest("--distill", "-v")
    result.stdout.fnmatch_lines(["*codes.eval.yaml::i*?finetuned? PASSED*"])
    result.stdout.fnmatch_lines(["modifyitems calls: [[]*[]]"])
    calls = next(line for line in result.stdout.lines if line.startswith("modifyitems calls:"))
    assert calls.count(",") == 0, calls


# --- item 4: --distill-no-wait defers the gate --------------------------------------------------


def test_no_wait_exits_0_with_only_below_passing_grades_and_says_the_gate_is_deferred(
    codes: pytest.Pytester, trainer: ScriptedServer
) -> None:
    trainer.api.job_status = "running"
    result = codes.runpytest("--distill", "--distill-no-wait")
    result.stdout.fnmatch_lines(
        ["distill: job ftjob-* is running; the gate is deferred: run `pytest --distill` again *"]
    )
    assert result.ret == 0, result.stdout.str()


def test_no_wait_still_fails_on_a_failing_ordinary_test(
    codes: pytest.Pytester, trainer: ScriptedServer
) -> None:
    trainer.api.job_status = "running"
    codes.makepyfile(test_plain="def test_broken():\n    assert False\n")
    assert codes.runpytest("--distill", "--distill-no-wait").ret == pytest.ExitCode.TESTS_FAILED


# --- item 5: a 5xx on job create is looked up before it counts ---------------------------------


def test_a_job_created_before_a_500_is_found_and_followed_in_the_same_run(
    codes: pytest.Pytester, trainer: ScriptedServer
) -> None:
    trainer.api.create_fails.append(500)
    result = codes.runpytest("--distill")
    result.stdout.fnmatch_lines(["distill: fine-tuned model ft:small:scripted:distill:ftjob-*"])
    assert result.ret in (0, 1), result.stdout.str()  # below-passing student cases, no gate
    assert len(_paths(trainer, "POST", "/v1/fine_tuning/jobs")) == 1
    assert len(trainer.api.jobs) == 1


def test_a_500_on_create_with_no_job_behind_it_is_retried(
    codes: pytest.Pytester, trainer: ScriptedServer
) -> None:
    trainer.failures.clear()
    trainer.api.create_fails.append(500)
    trainer.api.jobs_lost_on_fail = True
    result = codes.runpytest("--distill")
    result.stdout.fnmatch_lines(["distill: fine-tuned model ft:small:scripted:distill:ftjob-*"])
    assert len(_paths(trainer, "POST", "/v1/fine_tuning/jobs")) == 2
    assert len(trainer.api.jobs) == 1


# --- item 6: Ctrl-C within seconds ---------------------------------------------------------------


def test_ctrl_c_with_calls_in_flight_stops_within_seconds_and_leaves_no_temporary_file(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    with ScriptedServer(_answer, delay=120) as slow:
        pytester.makeini(_ini(slow.base_url))
        pytester.makefile(".eval.yaml", codes=suite())
        log = tmp_path / "run.log"
        with log.open("w") as output:
            run = pytester.popen(
                [sys.executable, "-m", "pytest", *RUN_ARGS],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(slow.chat_requests()) < 4:
            time.sleep(0.1)
        assert len(slow.chat_requests()) >= 4, log.read_text()  # calls in flight
        run.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        try:
            run.wait(timeout=20)
        finally:
            run.kill()
        took = time.monotonic() - interrupted
    print(f"\nstopped {took:.1f} s after SIGINT")  # -s shows it
    assert took < 10, f"took {took:.1f} s:\n{log.read_text()}"
    assert "KeyboardInterrupt" in log.read_text()
    left = [p for p in pytester.path.rglob(".*.*") if p.is_file() and p.name[1:].count(".") > 1]
    assert left == [], left


# --- item 15: stored completions stop at the limit ----------------------------------------------


def test_stored_completions_stop_at_the_limit_without_another_page_request(
    codes: pytest.Pytester, trainer: ScriptedServer
) -> None:
    for n in range(5):
        trainer.api.store("big", f"question {n}", f"answer {n}", distill_suite="codes")
    (codes.path / "codes.eval.yaml").unlink()
    codes.makefile(
        ".eval.yaml",
        production="""\
name: production
source:
  stored_completions: {role: teacher, model: big, metadata: {distill_suite: codes}, limit: 2}
graders:
  - {type: string_check, operation: eq}
""",
    )
    result = codes.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["production.eval.yaml::chatcmpl-stored0001[[]teacher[]]", "*"])
    assert "chatcmpl-stored0003" not in result.stdout.str()
    assert len(_paths(trainer, "GET", "/v1/chat/completions?")) == 1
