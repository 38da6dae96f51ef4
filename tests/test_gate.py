"""Unit tests for gate expressions and the statistics behind the report (gate.py)."""

from __future__ import annotations

import pytest

from pytest_distill.verdict.gate import (
    GATE_FAILED_EXIT_CODE,
    Gate,
    GateSyntaxError,
    RoleStats,
    percentile,
)


def stats(
    score: float, *, n: int = 10, prompt_tokens: float = 100.0, cost: float | None = None
) -> RoleStats:
    return RoleStats(n, score, score, prompt_tokens, 20.0, 0.5, 1.5, cost)


STATS = {
    "teacher": stats(0.8, prompt_tokens=1000.0, cost=2.0),
    "student": stats(0.5, prompt_tokens=200.0, cost=0.1),
    "finetuned": stats(0.62, prompt_tokens=200.0, cost=0.1),
}


def test_gate_exit_code_is_outside_pytests_own_codes() -> None:
    assert GATE_FAILED_EXIT_CODE == 6


def test_gate_collects_the_roles_it_names() -> None:
    gate = Gate.parse("finetuned >= 0.95 * teacher and finetuned.pass_rate > student")
    assert gate.roles == frozenset({"finetuned", "teacher", "student"})


def test_failing_gate_reason_names_first_failing_clause_with_numbers() -> None:
    result = Gate.parse("finetuned >= 0.95 * teacher and finetuned >= student + 0.10").evaluate(
        STATS
    )
    assert result.passed is False
    assert result.reason == (
        "gate failed: finetuned >= 0.95 * teacher: 0.620 >= 0.95 * 0.800 = 0.760 -> False"
    )
    assert [clause.passed for clause in result.clauses] == [False, True]
    assert result.clauses[1].explanation == (
        "finetuned >= student + 0.10: 0.620 >= 0.500 + 0.1 = 0.600 -> True"
    )


def test_passing_gate_reports_every_clause() -> None:
    result = Gate.parse("finetuned >= student and teacher > 0.5").evaluate(STATS)
    assert result.passed is True
    assert result.reason == "gate passed: finetuned >= student and teacher > 0.5"
    assert len(result.clauses) == 2
    assert "\n" not in result.reason


def test_attributes_of_roles_are_compared() -> None:
    gate = Gate.parse("finetuned.prompt_tokens <= 0.3 * teacher.prompt_tokens")
    result = gate.evaluate(STATS)
    assert result.passed is True
    assert result.clauses[0].explanation.endswith(": 200.0 <= 0.3 * 1000.0 = 300.0 -> True")


def test_chained_comparison_and_or_not_evaluate_like_python() -> None:
    assert Gate.parse("0.5 <= finetuned <= 0.7").evaluate(STATS).passed is True
    assert Gate.parse("0.7 <= finetuned <= 0.9").evaluate(STATS).passed is False
    assert Gate.parse("finetuned > 0.9 or student < 0.6").evaluate(STATS).passed is True
    assert Gate.parse("not finetuned < student").evaluate(STATS).passed is True
    assert Gate.parse("-finetuned < -0.6").evaluate(STATS).passed is True


def test_top_level_or_is_a_single_clause() -> None:
    result = Gate.parse("finetuned > 0.9 or student > 0.9").evaluate(STATS)
    assert len(result.clauses) == 1
    assert result.reason == (
        "gate failed: finetuned > 0.9 or student > 0.9: (0.620 > 0.9 or 0.500 > 0.9) -> False"
    )


def test_parentheses_survive_in_the_explanation() -> None:
    result = Gate.parse("(teacher + student) / 2 <= finetuned").evaluate(STATS)
    assert result.clauses[0].explanation.endswith("(0.800 + 0.500) / 2 = 0.650 <= 0.620 -> False")


def test_gate_naming_a_role_without_results_is_not_evaluated() -> None:
    result = Gate.parse("finetuned >= teacher and judge > 0").evaluate(
        {**STATS, "finetuned": stats(0.0, n=0)}
    )
    assert result.passed is None
    assert result.missing_roles == ("finetuned", "judge")
    assert result.reason == "gate not evaluated: no results for finetuned, judge"


def test_gate_on_cost_without_prices_is_not_evaluated() -> None:
    result = Gate.parse("finetuned.cost < teacher.cost").evaluate(
        {**STATS, "teacher": stats(0.8, cost=None)}
    )
    assert result.passed is None and "no cost known for teacher" in result.reason
    assert Gate.parse("finetuned.cost < teacher.cost").evaluate(STATS).passed is True


def test_division_by_zero_fails_the_clause_with_an_explanation() -> None:
    result = Gate.parse("finetuned / (student - 0.5) > 1").evaluate(STATS)
    assert result.passed is False
    assert result.reason.endswith("divides by zero -> False")


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("finetuned >= teachr", "unknown role 'teachr' at column 14.*did you mean 'teacher'"),
        ("finetuned.scor > 0.9", "unknown attribute 'scor' at column 1.*did you mean 'score'"),
        ("finetuned", "a number is not a condition"),
        ("finetuned and teacher > 1", "a number is not a condition"),
        ("finetuned ** 2 > 0.5", "operator Pow is not allowed"),
        ("finetuned >= 0.9 &&", "invalid syntax at column"),
        ("max(finetuned, 1) > 0", "a function call is not allowed"),
        ("finetuned is teacher", "comparison Is is not allowed"),
        ("finetuned > (teacher > 1)", "a condition is used as a number"),
        ("'high' < teacher", "the constant 'high' is not allowed"),
        ("finetuned > True", "the constant True is not allowed"),
        ("   ", "the expression is empty"),
        ("__import__('os').system('x') > 1", "not allowed"),
    ],
)
def test_gate_syntax_errors_name_the_problem_and_what_is_allowed(
    expression: str, message: str
) -> None:
    with pytest.raises(GateSyntaxError, match=message) as info:
        Gate.parse(expression)
    assert "allowed: role names (teacher, student, sft, finetuned, judge)" in str(info.value)
    assert repr(expression.strip()) in str(info.value)


def test_gate_syntax_error_carries_column_and_token() -> None:
    with pytest.raises(GateSyntaxError) as info:
        Gate.parse("finetuned >= 0.95 * teachr")
    assert (info.value.column, info.value.token) == (21, "teachr")


def test_percentile_interpolates_between_ranks() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 95) == pytest.approx(4.8)
    assert percentile([7.0], 95) == 7.0
    assert percentile([4.0, 1.0], 0) == 1.0


def test_percentile_of_nothing_raises() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)


@pytest.mark.parametrize(
    ("expression", "column"),
    [("finetuned >= 0.9 *", 19), ("finetuned >= 0.9 and", 21), ("finetuned >= >= 2", 14)],
)
def test_gate_syntax_error_points_where_the_expression_breaks(expression: str, column: int) -> None:
    with pytest.raises(GateSyntaxError) as info:
        Gate.parse(expression)
    assert info.value.column == column
    assert f"at column {column}" in str(info.value)


def test_gate_with_errored_cases_of_a_role_it_uses_is_not_evaluated() -> None:
    errored = RoleStats(3, 1.0, 1.0, 10, 5, 0.1, 0.2, errors=1)
    result = Gate.parse("teacher >= 0.5").evaluate({"teacher": errored})
    assert result.passed is None and result.status == "not evaluated"
    assert result.reason.startswith("gate not evaluated: 1 of 3 teacher cases have no grade")
