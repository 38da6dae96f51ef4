"""Python tests take part through role fixtures and the ``distill`` marker."""

from __future__ import annotations

import json

import pytest


def test_role_fixtures_call_their_models_and_are_reported(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        def test_teacher_knows(teacher):
            assert teacher.complete("Capital of Italy?") == "Rome"

        def test_student_sdk_shape(student):
            reply = student.chat.completions.create(
                messages=[{"role": "user", "content": "Capital of Italy?"}]
            )
            assert reply.choices[0].message.content == "Milan"
            assert student.calls[-1].model == "small"
        """
    )
    result = project.runpytest("--distill-report=r.json")
    result.assert_outcomes(passed=2)
    report = json.loads((project.path / "r.json").read_text())
    roles = {i["role"]: i for i in report["items"]}
    assert roles["teacher"]["reply"] == "Rome"
    assert roles["student"]["prompt_tokens"] == 3


def test_role_parametrized_fixture_runs_once_per_role(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import pytest

        @pytest.mark.distill(graders=[{"type": "string_check", "operation": "eq"}],
                             reference="Rome", case_id="italy")
        def test_capital(distill_client):
            distill_client.complete("Capital of Italy?")
        """
    )
    result = project.runpytest("-v", "--distill-report=r.json")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*test_capital?teacher? PASSED*", "*test_capital?student? FAILED*"]
    )
    result.stdout.fnmatch_lines(["*FAIL string_check: score 0.00*", "*reply: 'Milan'*"])
    report = json.loads((project.path / "r.json").read_text())
    assert {(i["role"], i["case_id"], i["score"]) for i in report["items"]} == {
        ("teacher", "italy", 1.0),
        ("student", "italy", 0.0),
    }


def test_finetuned_fixture_skips_while_there_is_no_finetuned_model(
    project: pytest.Pytester,
) -> None:
    project.makepyfile("def test_ft(finetuned):\n    pass\n")
    result = project.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*role 'finetuned' has no model*"])


def test_json_match_shows_a_path_by_path_diff(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from pytest_distill import json_match

        def test_order():
            reply = '{"sku": "A-1", "qty": 3}'
            assert json_match({"sku": "A-1", "qty": 2}) == reply
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*qty*2*3*"])


def test_a_python_eval_whose_model_call_fails_is_errored_not_scored_zero(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(
        """
        import pytest

        @pytest.mark.distill(graders=[{"type": "string_check", "operation": "eq"}],
                             reference="Rome", case_id="italy")
        def test_capital(distill_client):
            if distill_client.role == "student":
                raise ConnectionError("the student's endpoint went away")
            distill_client.complete("Capital of Italy?")
        """
    )
    result = project.runpytest("--distill-report=r.json")
    result.assert_outcomes(passed=1, failed=1)
    report = json.loads((project.path / "r.json").read_text())
    student = next(i for i in report["items"] if i["role"] == "student")
    assert student["error"] == "ConnectionError: the student's endpoint went away"
    assert student["score"] is None
    assert report["scores"]["student"]["all"]["errors"] == 1
    assert report["scores"]["student"]["all"]["mean_score"] is None
