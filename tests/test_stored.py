"""Store teacher calls with metadata, then turn the stored completions into cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SUITE = """\
name: codes
prompt:
  user: "Which code goes with item {{ n }}?"
graders:
  - {type: string_check, operation: like}
cases:
  - {id: a, vars: {n: 1}, reference: Z}
  - {id: b, vars: {n: 2}, reference: Z}
  - {id: c, vars: {n: 3}, reference: Z}
"""

FROM_STORE = """\
name: production
source:
  stored_completions:
    role: teacher
    model: tiny
    metadata: {distill_suite: codes}
graders:
  - {type: string_check, operation: eq}
"""


@pytest.fixture
def local_project(pytester: pytest.Pytester, tiny_model: Path) -> pytest.Pytester:
    pytester.makeini(
        f"""
        [pytest]
        distill_teacher_model = tiny
        distill_teacher_endpoint = local
        distill_student_model = tiny
        distill_student_endpoint = local
        distill_local_models = tiny = {tiny_model}
        distill_teacher_params = temperature=0 max_tokens=4
        distill_student_params = temperature=0 max_tokens=4
        distill_store = true
        """
    )
    return pytester


def test_stored_teacher_calls_become_cases_with_the_stored_reply_as_reference(
    local_project: pytest.Pytester,
) -> None:
    local_project.makefile(".eval.yaml", codes=SUITE)
    local_project.runpytest("--distill-roles=teacher", "--distill-report=first.json")
    first = json.loads((local_project.path / "first.json").read_text())
    replies = {i["completion_id"]: i["reply"] for i in first["items"]}
    assert len(replies) == 3

    local_project.makefile(".eval.yaml", production=FROM_STORE)
    result = local_project.runpytest(
        "production.eval.yaml", "--distill-roles=teacher", "--distill-report=second.json", "-v"
    )
    result.stdout.fnmatch_lines(["*production.eval.yaml::chatcmpl-*?teacher? *"])
    second = json.loads((local_project.path / "second.json").read_text())
    # The same model, greedy, on the same stored request: it reproduces its stored reply.
    assert {i["case_id"] for i in second["items"]} == set(replies)
    assert all(i["passed"] for i in second["items"]), second["items"]


def test_stored_source_with_no_match_is_a_collection_error(
    local_project: pytest.Pytester,
) -> None:
    local_project.makefile(".eval.yaml", production=FROM_STORE.replace("codes", "nothing"))
    result = local_project.runpytest()
    result.stdout.fnmatch_lines(
        [
            "production.eval.yaml:2: no stored completions of role 'teacher' match model 'tiny' and metadata {'distill_suite': 'nothing'}; *"
        ]
    )
