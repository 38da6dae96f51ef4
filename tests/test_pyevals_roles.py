"""Python evals: model-judged marker graders, and one case key for every role of a test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from scripted_server import ScriptedServer


def _judge_answer(model: str, messages: list[dict[str, Any]]) -> str:
    """A judge that knows Rome is the capital of Italy."""
    asked = messages[-1]["content"]
    right = "Answer: Rome" in asked
    if "labels" in asked:
        return "correct" if right else "incorrect"
    return "Score: 1" if right else "Score: 0"


@pytest.fixture
def judge_server() -> Iterator[ScriptedServer]:
    with ScriptedServer(_judge_answer) as srv:
        yield srv


@pytest.mark.parametrize(
    "grader",
    [
        '{"type": "score_model", "pass_threshold": 0.5, "input": PROMPT}',
        '{"type": "label_model", "labels": ["correct", "incorrect"], '
        '"passing_labels": ["correct"], "input": PROMPT}',
    ],
)
def test_model_graders_in_the_marker_ask_the_judge_role(
    project: pytest.Pytester, judge_server: ScriptedServer, grader: str
) -> None:
    project.makeini(
        project.path.joinpath("tox.ini").read_text()
        + f"\ndistill_judge_model = judge\ndistill_judge_endpoint = {judge_server.base_url}\n"
    )
    project.makepyfile(
        f"""
        import pytest

        PROMPT = [{{"role": "user", "content": "Italy's capital? Answer: {{{{sample.output_text}}}}"}}]

        @pytest.mark.distill(graders=[{grader}])
        def test_capital(distill_client):
            distill_client.complete("Capital of Italy?")
        """
    )
    result = project.runpytest("-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*test_capital?teacher? PASSED*", "*test_capital?student? FAILED*"]
    )
    result.stdout.no_fnmatch_line("*needs the judge role*")
    judged = [b for b in judge_server.chat_requests() if b["model"] == "judge"]
    assert len(judged) == 2


def test_a_tests_roles_share_one_case_key_and_split(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import pytest

        @pytest.mark.distill(graders=[{"type": "string_check"}], reference="Rome")
        def test_capital(distill_client):
            distill_client.complete("Capital of Italy?")

        @pytest.mark.parametrize("country", ["Italy", "France"])
        @pytest.mark.distill(graders=[{"type": "string_check", "operation": "ne"}], reference="x")
        def test_each(distill_client, country):
            distill_client.complete(f"Capital of {country}?")
        """
    )
    pytest.importorskip("xdist")
    for args in (["--distill-holdout=0.5"], ["--distill-holdout=0.2", "-n", "2"]):
        project.runpytest("--distill-report=r.json", *args)
        items = json.loads((project.path / "r.json").read_text())["items"]
        keys = {(i["role"], i["case_id"], i["split"]) for i in items}
        by_role = {
            role: {(case, split) for r, case, split in keys if r == role}
            for role in ("teacher", "student")
        }
        assert by_role["teacher"] == by_role["student"]
        assert {case for case, _ in by_role["teacher"]} == {
            "test_capital",
            "test_each[Italy]",
            "test_each[France]",
        }
