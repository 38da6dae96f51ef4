"""The gate's clause tree: parsed once, typed, and what every consumer reads."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from conftest import SUITE

from pytest_distill.verdict import grammar, tree, view
from pytest_distill.verdict.gate import Gate
from pytest_distill.verdict.tree import (
    And,
    Arithmetic,
    Compare,
    Constant,
    Difference,
    Metric,
    Not,
    Or,
    Ref,
    Sign,
)

EXAMPLE = (
    "noninferior(finetuned, teacher, margin=0.05) "
    "and finetuned.prompt_tokens <= 0.5 * teacher.prompt_tokens"
)


def test_the_gate_is_a_typed_tree_of_clauses() -> None:
    gate = Gate.parse(EXAMPLE)
    test, budget = gate.clauses
    assert test == tree.Test(
        "noninferior",
        Ref("finetuned"),
        Ref("teacher"),
        0.05,
        "noninferior(finetuned, teacher, margin=0.05)",
        "noninferior(finetuned, teacher, margin=0.05)",
    )
    assert test.threshold == -0.05
    assert budget == Compare(
        (
            Metric(Ref("finetuned"), "prompt_tokens"),
            Arithmetic("*", Constant(0.5), Metric(Ref("teacher"), "prompt_tokens")),
        ),
        ("<=",),
        "finetuned.prompt_tokens <= 0.5 * teacher.prompt_tokens",
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        test.margin = 1.0  # type: ignore[misc]


def test_suites_differences_signs_and_boolean_nodes() -> None:
    gate = Gate.parse(
        "superior(finetuned['due-dates'], student['due-dates'], margin=0.1) or "
        "not (finetuned[meetings] - teacher[meetings]).low < -finetuned.pass_k"
    )
    (clause,) = gate.clauses
    assert isinstance(clause, Or)
    test, negation = clause.values
    assert isinstance(test, tree.Test) and isinstance(negation, Not)
    assert test.a == Ref("finetuned", "due-dates")
    assert test.a.label == "finetuned[due-dates]"
    assert test.call == "superior(finetuned['due-dates'], student['due-dates'], margin=0.1)"
    compare = negation.operand
    assert isinstance(compare, Compare)
    assert compare.operands == (
        Difference(Ref("finetuned", "meetings"), Ref("teacher", "meetings"), "low"),
        Sign("-", Metric(Ref("finetuned"), "pass_k")),
    )
    assert gate.roles == {
        "finetuned",
        "finetuned[due-dates]",
        "student[due-dates]",
        "finetuned[meetings]",
        "teacher[meetings]",
    }
    assert gate.role_names == {"finetuned", "student", "teacher"}
    assert gate.differences() == (
        ("finetuned[meetings]", "teacher[meetings]"),
        ("finetuned[due-dates]", "student[due-dates]"),
    )


def test_a_top_level_and_splits_into_clauses_and_a_nested_one_stays() -> None:
    gate = Gate.parse("teacher > 0.5 and (student > 0.1 and finetuned > 0.2)")
    first, second = gate.clauses
    assert isinstance(first, Compare) and first.text == "teacher > 0.5"
    assert isinstance(second, And) and second.text == "student > 0.1 and finetuned > 0.2"
    assert Gate.parse("teacher\n   >= 0.5").clauses[0].text == "teacher >= 0.5"


def test_the_grammar_checks_run_in_the_one_parse() -> None:
    with pytest.raises(grammar.GateSyntaxError) as info:
        grammar.parse("noninferior(finetuned, tecaher, margin=0.05)")
    assert info.value.column == 24
    assert "unknown role 'tecaher'" in str(info.value)
    assert "did you mean 'teacher'?" in str(info.value)


def test_the_gate_split_is_one_function_for_sessions_and_reports() -> None:
    assert view.gate_split(["train", None]) == "all"
    assert view.gate_split(["train", "holdout"]) == "holdout"
    assert view.gate_split({"items": [{"split": "holdout"}]}) == "holdout"
    assert view.gate_split({"items": [{"split": "holdout"}], "gate": {"split": "all"}}) == "all"


def test_the_verdict_reads_a_report_with_its_exit_code() -> None:
    gate = {"passed": True, "expression": "teacher > 0", "split": "all"}
    found = view.verdict({"gate": gate, "exit_code": 0}, other_failures=2)
    assert found == view.Verdict("passed", "Gate passed", "on all cases: teacher > 0", 0, 2)
    assert view.verdict({"exit_code": True}).exit_code is None


def test_a_session_parses_its_gate_once(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Start-up's check, the evaluation, the summary (pairs, power, few cases), the JSON
    report, the HTML page and the job summary all read the one tree."""
    calls: list[str] = []
    parse = grammar.parse

    def counted(expression: str) -> Any:
        calls.append(expression)
        return parse(expression)

    monkeypatch.setattr(grammar, "parse", counted)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(project.path / "summary.md"))
    project.makefile(".eval.yaml", capitals=SUITE)
    gate = "noninferior(teacher, student, margin=0.5) and teacher.prompt_tokens >= 0"
    result = project.runpytest_inprocess(
        "--distill-gate",
        gate,
        "--distill-report=out/report.json",
        "--distill-html=out/report.html",
    )
    result.stdout.fnmatch_lines(["gate on * cases: " + gate, "note: the gate reads *"])
    assert calls == [gate]
    report = json.loads((project.path / "out" / "report.json").read_text())
    assert report["gate"]["expression"] == gate
    assert report["paired"]["pairs"][0]["a"] == "teacher"
    assert "pytest-distill" in (project.path / "summary.md").read_text()
