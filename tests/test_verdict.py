"""The verdict: it fails closed, says the exit code it returns, and reads at a glance."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import SUITE

OTHER_SUITE = SUITE.replace("name: capitals", "name: more").replace("id: ", "id: m-")


def _report(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict[str, Any]]:
    result = pytester.runpytest("--distill-report=out/report.json", *args)
    return result, json.loads((pytester.path / "out" / "report.json").read_text())


def _last_line_of_summary(result: pytest.RunResult) -> str:
    """The line just above pytest's final ``=== N passed ... ===`` line."""
    lines = [line for line in result.stdout.lines if line.strip()]
    return lines[-2]


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (("--distill-roles=teacher",), "student: not selected by --distill-roles*"),
        (("-k", "teacher"), "student: none of its items ran (deselected by -k*"),
    ],
)
def test_a_gate_whose_role_has_no_results_fails_closed(
    project: pytest.Pytester, args: tuple[str, ...], why: str
) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    result = project.runpytest("--distill-gate", "teacher >= student", *args)
    assert result.ret == 6
    assert _last_line_of_summary(result) == (
        "gate not evaluated: no results for student ("
        + why.rstrip("*")
        + _last_line_of_summary(result).split(why.rstrip("*"), 1)[1]
    )
    result.stdout.fnmatch_lines([f"gate not evaluated: no results for student ({why}"])
    result.stdout.fnmatch_lines(["*the gate fails closed (exit code 6)"])
    result.stdout.no_fnmatch_line("*gate not evaluated: gate not evaluated*")


def test_a_cost_clause_without_a_price_fails_closed(project: pytest.Pytester) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    result = project.runpytest("--distill-gate", "teacher.cost <= 1")
    assert result.ret == 6
    result.stdout.fnmatch_lines(
        ["gate not evaluated: no cost known for teacher (no price set); *(exit code 6)"]
    )


def test_a_gate_naming_a_role_without_a_model_is_skipped_and_the_items_decide(
    project: pytest.Pytester,
) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    result = project.runpytest("--distill-gate", "finetuned >= teacher", "--distill-roles=teacher")
    assert result.ret == 0
    assert _last_line_of_summary(result).startswith(
        "gate skipped: finetuned has no model yet (run `pytest --distill` to train it)"
    )
    assert _last_line_of_summary(result).endswith("(exit code 0)")


def test_missing_recordings_are_counted_per_role_and_the_gate_fails_closed(
    project: pytest.Pytester,
) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    result, report = _report(
        project, "--distill-record-mode=none", "--distill-gate", "teacher >= student"
    )
    assert result.ret == 6
    result.stdout.fnmatch_lines(
        [
            "*cases*errors*pass*score*",
            "*teacher*5*5*-*-*",
            "*student*5*5*-*-*",
            "gate not evaluated: 2 of 2 student, 2 of 2 teacher cases have no grade *(exit code 6)",
        ]
    )
    result.stdout.no_fnmatch_line("*gate passed*")
    assert report["scores"]["teacher"]["all"]["errors"] == 5
    assert report["gate"]["status"] == "not evaluated"
    assert all(i["error"].startswith("no recording: ") for i in report["items"])


def test_a_cassette_miss_is_one_line_without_a_traceback(project: pytest.Pytester) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    result = project.runpytest("--distill-record-mode=none", "-k", "fr and teacher")
    result.stdout.fnmatch_lines(
        [
            "*_ capitals::fr?teacher? (capitals.eval.yaml:*) _*",
            "POST /v1/chat/completions has no recorded response; *",
            "=*short test summary info*=",
        ]
    )
    result.stdout.no_fnmatch_line("*Traceback*")
    result.stdout.no_fnmatch_line("*.py:*: in *")


def test_the_message_says_the_exit_code_returned_when_tests_fail_too(
    project: pytest.Pytester,
) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    project.makepyfile("def test_broken():\n    assert 1 == 2\n")
    failed = project.runpytest("--distill-gate", "student >= teacher")
    assert failed.ret == 6  # the gate outranks failing tests
    assert _last_line_of_summary(failed).endswith("(exit code 6)")
    passed = project.runpytest("--distill-gate", "teacher >= student")
    assert passed.ret == 1
    assert _last_line_of_summary(passed) == (
        "gate passed on holdout cases (exit code 1; 1 failed or errored item(s) or test(s))"
    )


def test_with_a_gate_below_passing_cases_are_their_own_outcome(project: pytest.Pytester) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    result = project.runpytest("--distill-gate", "teacher >= student + 0.5", "-rb")
    assert result.ret == 0
    assert "= 6 passed, 4 below passing in " in result.stdout.lines[-1]
    result.stdout.no_fnmatch_line("*= FAILURES =*")
    result.stdout.no_fnmatch_line("FAILED *")
    result.stdout.fnmatch_lines(
        [
            "capitals.eval.yaml ......bbbb*",
            "BELOW PASSING capitals.eval.yaml::it?student? - FAIL string_check: score 0.00*",
            "*= distill summary =*",
        ]
    )
    verbose = project.runpytest("--distill-gate", "teacher >= student + 0.5", "-v")
    verbose.stdout.fnmatch_lines(["*capitals.eval.yaml::it?student? BELOW PASSING*"])


def test_without_a_gate_below_passing_cases_stay_failed_tests(project: pytest.Pytester) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    result = project.runpytest()
    assert result.ret == 1
    result.assert_outcomes(passed=6, failed=4)
    assert _last_line_of_summary(result) == "no gate configured (exit code 1)"


def test_last_failed_reruns_the_below_passing_cases(project: pytest.Pytester) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    project.runpytest("--distill-gate", "teacher >= student + 0.5")
    again = project.runpytest("--distill-gate", "teacher >= student", "--lf", "-v")
    again.stdout.fnmatch_lines(["*run-last-failure: rerun previous 4 failures*"])
    assert "= 4 below passing in " in again.stdout.lines[-1]


def test_below_passing_survives_xdist(project: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    project.makefile(".eval.yaml", capitals=SUITE)
    result = project.runpytest("-n", "2", "--distill-gate", "teacher >= student + 0.5")
    assert result.ret == 0
    assert "= 6 passed, 4 below passing in " in result.stdout.lines[-1]


def test_the_verdict_comes_after_the_short_test_summary(project: pytest.Pytester) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    project.makepyfile("def test_broken():\n    assert 1 == 2\n")
    result = project.runpytest("--distill-gate", "teacher >= student", "-ra")
    result.stdout.fnmatch_lines(
        [
            "*= short test summary info =*",
            "FAILED test_the_verdict_comes_after_the_short_test_summary.py::test_broken*",
            "*= distill summary =*",
            "gate passed on holdout cases (exit code 1; *",
            "*= 1 failed, 6 passed, 4 below passing in *",
        ]
    )


def test_by_suite_rows_are_holdout_cases_for_every_role(project: pytest.Pytester) -> None:
    project.makefile(".eval.yaml", capitals=SUITE, more=OTHER_SUITE)
    result, report = _report(project, "--distill-holdout=0.5", "--distill-gate", "teacher >= 0")
    holdout = [i for i in report["items"] if i["split"] == "holdout" and i["role"] == "teacher"]
    for suite in ("capitals", "more"):
        wanted = sum(1 for i in holdout if i["suite"] == suite)
        assert report["suites"][suite]["teacher"]["holdout"]["cases"] == wanted
        assert report["suites"][suite]["teacher"]["all"]["cases"] == 5
        result.stdout.fnmatch_lines(["by suite, holdout cases:", f"  {suite} teacher * {wanted} *"])
    result.stdout.fnmatch_lines(
        [f"note: the gate reads {len(holdout)} teacher holdout cases, fewer than 50*"]
    )


def test_a_figure_that_does_not_exist_is_null_in_the_report(project: pytest.Pytester) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    _, report = _report(project, "--distill-holdout=0")
    empty = report["scores"]["teacher"]["holdout"]
    assert empty["cases"] == 0
    assert empty["pass_rate"] is None
    assert empty["mean_score"] is None
    assert empty["cost_usd"] is None
    assert report["schema"] == "pytest-distill/report/2"


def test_a_misspelt_role_in_distill_model_suggests_the_right_one(project: pytest.Pytester) -> None:
    result = project.runpytest("--distill-model", "techer=foo")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--distill-model 'techer=foo': did you mean 'teacher'?*"])
