"""Options: one ``distill`` group, CLI > environment > ini, and clear usage errors."""

from __future__ import annotations

import pytest
from conftest import SUITE


def test_help_lists_every_option_in_one_distill_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(
        [
            "eval-driven model distillation (pytest-distill):",
            "  --distill *",
            "  --distill-no-wait*",
            "  --distill-roles=ROLES*",
            "  --distill-model=ROLE=MODEL*",
            "  --distill-endpoint=ROLE=ENDPOINT*",
            "  --distill-concurrency=N*",
            "  --distill-report=PATH*",
            "  --distill-gate=EXPR*",
            "  --distill-holdout=FRACTION*",
        ]
    )
    result.stdout.fnmatch_lines(["  distill_gate (string):*", "  distill_teacher_model (string):*"])


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (
            ["--distill-concurrency=zero"],
            "",
            "*--distill-concurrency / ini distill_concurrency: 'zero' is not valid; use a whole number >= 1*",
        ),
        (
            [],
            "distill_holdout = 1.5",
            "*--distill-holdout / ini distill_holdout: '1.5' is not valid; use a number from 0 to 0.9*",
        ),
        (
            ["--distill-roles=teacher,tutor"],
            "",
            "*unknown role 'tutor'; allowed: teacher, student, finetuned*",
        ),
        (
            ["--distill-model=boss=gpt"],
            "",
            "*--distill-model 'boss=gpt': expected ROLE=MODEL with ROLE one of teacher, student*",
        ),
        (
            [],
            "distill_student_endpoint = ftp://x",
            "*endpoint 'ftp://x' is not valid; use 'openai', 'local' or a base URL*ini distill_student_endpoint*",
        ),
        (["--distill-gate", "teacher >="], "", "*--distill-gate / ini distill_gate: *teacher >=*"),
        (
            [],
            "distill_prices = big 1 2",
            "*ini distill_prices: 'big 1 2' is not 'MODEL = PROMPT COMPLETION'*",
        ),
        (
            [],
            "distill_teacher_params = temperature",
            "*ini distill_teacher_params: 'temperature' is not KEY=VALUE*",
        ),
    ],
)
def test_bad_option_or_ini_value_is_a_usage_error_naming_value_and_fix(
    pytester: pytest.Pytester, args: list[str], ini: str, message: str
) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


def test_misspelt_option_is_rejected_by_pytest(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--distil")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_cli_overrides_environment_which_overrides_ini(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    monkeypatch.setenv("DISTILL_STUDENT_MODEL", "big")
    only_it = ["capitals.eval.yaml::it[teacher]", "capitals.eval.yaml::it[student]"]
    result = project.runpytest(*only_it)
    result.assert_outcomes(passed=2)  # the environment made the student 'big'
    result = project.runpytest(*only_it, "--distill-model", "student=small")
    result.assert_outcomes(passed=1, failed=1)


def test_report_header_names_roles_and_endpoints(project: pytest.Pytester) -> None:
    result = project.runpytest()
    result.stdout.fnmatch_lines(
        [
            "distill: holdout 0.2; roles (model @ endpoint: parameters):",
            "  teacher  big @ http://127.0.0.1:*/v1: none (the endpoint's defaults)",
            "  student  small @ http://127.0.0.1:*/v1: *",
        ]
    )


def test_api_key_comes_from_environment_and_never_reaches_the_report(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scripted_server import ScriptedServer

    with ScriptedServer() as server:
        server.script("big", {"Capital of France?": "Paris"})
        monkeypatch.setenv("DISTILL_TEACHER_API_KEY", "sk-test-FAKE-KEY-123")
        pytester.makeini(
            f"[pytest]\ndistill_teacher_model = big\ndistill_teacher_endpoint = {server.base_url}\n"
        )
        pytester.makefile(".eval.yaml", capitals=SUITE)
        result = pytester.runpytest("-k", "fr", "--distill-report=r.json", "--junitxml=j.xml")
        result.assert_outcomes(passed=1)
    for name in ("r.json", "j.xml"):
        assert "FAKE-KEY" not in (pytester.path / name).read_text()
    assert "FAKE-KEY" not in result.stdout.str()
