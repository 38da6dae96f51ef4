"""Errors found before the first model call, and a "not evaluated" line that names each cause
once."""

from __future__ import annotations

import pytest
from conftest import SUITE
from scripted_server import ScriptedServer

OTHER_SUITE = SUITE.replace("name: capitals", "name: more").replace("id: ", "id: m-")


def _chat_calls(server: ScriptedServer) -> list[str]:
    return [p for _, p, _ in server.requests if p.endswith("/chat/completions")]


def test_a_misspelt_suite_in_the_gate_is_a_usage_error_before_any_call(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    result = project.runpytest("--distill-gate", "teacher[capital] >= 0.5")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --distill-gate / ini distill_gate: no suite named 'capital' was collected; "
            "did you mean 'capitals'?"
        ]
    )
    assert _chat_calls(server) == []


def test_a_suite_of_a_python_eval_counts_as_collected(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_py_evals="""
        import pytest

        @pytest.mark.distill(suite="spoken")
        def test_one(teacher):
            assert teacher.complete("Capital of France?") == "Paris"
        """
    )
    result = project.runpytest("--distill-gate", "teacher[spoken] >= 0.5")
    assert result.ret == 0, result.stdout.str()


def test_a_gate_in_a_session_without_evals_checks_nothing(project: pytest.Pytester) -> None:
    project.makepyfile("def test_plain():\n    assert True\n")
    result = project.runpytest("--distill-gate", "teacher[capitals] >= 0.5")
    assert result.ret != pytest.ExitCode.USAGE_ERROR


def test_a_deselected_suite_is_not_called_a_typo(project: pytest.Pytester) -> None:
    project.makefile(".eval.yaml", capitals=SUITE, more=OTHER_SUITE)
    result = project.runpytest(
        "--distill-gate",
        "teacher[more] >= 0.5 and student[more] >= 0.0",
        "--distill-holdout=0",
        "-k",
        "not m-",
    )
    assert result.ret == 6
    assert (
        "gate not evaluated: no results for student[more], teacher[more] (student[more], "
        "teacher[more]: no results in this suite (its items were deselected by -k, -m or "
        "node ids)); the gate fails closed (exit code 6)"
    ) in result.stdout.str()
    result.stdout.no_fnmatch_line("*a typo in*")


def test_each_cause_is_named_once(project: pytest.Pytester) -> None:
    project.makefile(".eval.yaml", capitals=SUITE, more=OTHER_SUITE)
    result = project.runpytest(
        "--distill-gate",
        "student >= 0.5 and student[more] >= 0.5 and student[capitals] >= 0.5",
        "--distill-roles=teacher",
    )
    assert result.ret == 6
    assert (
        "gate not evaluated: no results for student, student[capitals], student[more] "
        "(student: not selected by --distill-roles / ini distill_roles); the gate fails closed"
    ) in result.stdout.str()


def test_a_session_stopped_by_x_says_so_once(project: pytest.Pytester) -> None:
    project.makefile(".eval.yaml", capitals=SUITE, more=OTHER_SUITE)
    # The student answers Milan for Italy: that item fails and -x stops the session.
    result = project.runpytest(
        "--distill-gate",
        "student[more] >= 0.5 and teacher[more] >= 0.5",
        "--distill-holdout=0",
        "-x",
    )
    assert result.ret == 6
    assert (
        "gate not evaluated: no results for student[more], teacher[more] (student[more], "
        "teacher[more]: not run, the session stopped early (-x or maxfail)); the gate fails"
    ) in result.stdout.str()
    result.stdout.no_fnmatch_line("*a typo in*")
