"""The gate's statistical grammar: noninferior, superior, (a - b).low, role[suite], pass_k."""

from __future__ import annotations

import pytest
from scipy import stats as sp

from pytest_distill.verdict.clauses import pairs_from
from pytest_distill.verdict.gate import Gate, GateSyntaxError, RoleStats
from pytest_distill.verdict.stats import compare


def role(score: float, n: int = 100, **extra: float) -> RoleStats:
    return RoleStats(n, score, score, 100.0, 20.0, 0.5, 1.5, None, **extra)


# finetuned beats teacher on 12 cases, loses on 2, ties on 86 (80 both pass, 6 both fail)
FINETUNED = [1.0] * 12 + [0.0] * 2 + [1.0] * 80 + [0.0] * 6
TEACHER = [0.0] * 12 + [1.0] * 2 + [1.0] * 80 + [0.0] * 6
STUDENT = [0.0] * 90 + [1.0] * 10
PAIRS = pairs_from(
    {
        ("finetuned", "teacher"): compare("finetuned", "teacher", FINETUNED, TEACHER, 0.95),
        ("finetuned", "student"): compare("finetuned", "student", FINETUNED, STUDENT, 0.95),
    }
)
STATS = {"finetuned": role(0.92), "teacher": role(0.82), "student": role(0.10)}


def lower_bound(a: list[float], b: list[float]) -> float:
    """Pass/fail scores: Tango's score bound (checked against scipy in test_stats.py)."""
    return compare("a", "b", a, b, 0.95).lower_bound


def test_noninferior_passes_when_the_one_sided_bound_clears_minus_margin_and_says_so():
    result = Gate.parse("noninferior(finetuned, teacher, margin=0.05)").evaluate(STATS, PAIRS)
    bound = lower_bound(FINETUNED, TEACHER)
    assert result.passed is True
    assert result.clauses[0].explanation == (
        "noninferior(finetuned, teacher, margin=0.05): finetuned - teacher = +0.100, one-sided "
        f"95% lower bound {bound:+.3f} > -0.050 (n=100 paired, 12 better, 2 worse) -> True"
    )
    assert f"{bound:+.3f}" == "+0.043"


def test_superior_needs_the_bound_above_plus_margin():
    gate = Gate.parse(
        "superior(finetuned, teacher, margin=0.05) and superior(finetuned, student, margin=0.2)"
    )
    result = gate.evaluate(STATS, PAIRS)
    assert result.passed is False
    assert [c.passed for c in result.clauses] == [False, True]
    assert "<= +0.050" in result.clauses[0].explanation
    assert result.reason.startswith("gate failed: superior(finetuned, teacher, margin=0.05)")


def test_difference_operand_reads_its_interval_ends():
    low, high = sp.ttest_rel(FINETUNED, TEACHER).confidence_interval(0.95)
    result = Gate.parse(
        "(finetuned - teacher).low >= -0.05 and (finetuned - teacher).high < 0.1"
    ).evaluate(STATS, PAIRS)
    assert [c.passed for c in result.clauses] == [True, False]
    assert result.clauses[0].explanation == (
        f"(finetuned - teacher).low >= -0.05: {low:+.3f} (finetuned - teacher +0.100 95% CI "
        f"[{low:+.3f}, {high:+.3f}] n=100) >= -0.05 = -0.050 -> True"
    )


def test_bare_difference_stays_a_difference_of_means():
    result = Gate.parse("finetuned - teacher >= 0.05").evaluate(STATS, PAIRS)
    assert (
        result.clauses[0].explanation
        == "finetuned - teacher >= 0.05: 0.920 - 0.820 = 0.100 >= 0.05 -> True"
    )


def test_suite_clauses_read_that_suites_figures_and_fail_closed_without_them():
    stats = {**STATS, "finetuned[meetings]": role(0.05, n=20), "finetuned[triage]": role(0.95)}
    result = Gate.parse("finetuned >= 0.9 and finetuned[meetings].pass_rate >= 0.8").evaluate(
        stats, PAIRS
    )
    assert result.passed is False
    assert (
        result.clauses[1].explanation
        == "finetuned[meetings].pass_rate >= 0.8: 0.050 >= 0.8 -> False"
    )
    missing = Gate.parse("finetuned['due-dates'] >= 0.5").evaluate(stats, PAIRS)
    assert missing.passed is None and missing.missing_roles == ("finetuned[due-dates]",)


def test_suite_pairs_are_looked_up_by_label():
    pairs = pairs_from(
        {
            ("finetuned[triage]", "teacher[triage]"): compare(
                "finetuned[triage]", "teacher[triage]", FINETUNED, TEACHER, 0.95
            )
        }
    )
    stats = {**STATS, "finetuned[triage]": role(0.92), "teacher[triage]": role(0.82)}
    gate = Gate.parse("noninferior(finetuned[triage], teacher[triage], margin=0.05)")
    assert gate.roles == frozenset({"finetuned[triage]", "teacher[triage]"})
    assert gate.evaluate(stats, pairs).passed is True


def test_a_clause_without_paired_cases_fails():
    result = Gate.parse(
        "noninferior(finetuned, student, margin=0.05) and (student - teacher).low > 0"
    ).evaluate(STATS, pairs_from({}))
    assert result.passed is False
    assert result.clauses[0].explanation.endswith("0 paired cases, at least 5 are needed -> False")
    assert "no cases that both student and teacher ran" in result.clauses[1].explanation


def test_pass_k_and_pass_at_k_are_attributes():
    stats = {**STATS, "finetuned": role(0.9, pass_k=0.7, pass_at_k=0.95)}
    result = Gate.parse("finetuned.pass_k >= 0.6 and finetuned.pass_at_k > 0.99").evaluate(stats)
    assert [c.explanation for c in result.clauses] == [
        "finetuned.pass_k >= 0.6: 0.700 >= 0.6 -> True",
        "finetuned.pass_at_k > 0.99: 0.950 > 0.99 -> False",
    ]


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("noninferior(finetuned, teacher)", "noninferior() takes two roles and margin="),
        ("noninferior(finetuned, 0.5, margin=0.05)", "noninferior() compares roles"),
        ("noninferior(finetuned, techer, margin=0.05)", "did you mean 'teacher'?"),
        ("noninferior(finetuned, teacher, margin=-0.05)", "margin must not be negative"),
        ("better(finetuned, teacher, margin=0.05)", "unknown function 'better'"),
        ("(finetuned - teacher).lo > 0", "unknown attribute 'lo'"),
        ("finetuned[0] > 0.5", "a role's suite is a name"),
        ("noninferior(finetuned, teacher, margin=0.05) + 1 > 0", "a function call is not allowed"),
    ],
)
def test_statistical_clauses_outside_the_grammar_are_syntax_errors(expression, problem):
    with pytest.raises(
        GateSyntaxError, match=problem.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")
    ):
        Gate.parse(expression)


def test_a_clause_on_one_paired_case_fails_and_says_one_case():
    one = pairs_from(
        {("finetuned", "teacher"): compare("finetuned", "teacher", [1.0], [0.0], 0.95)}
    )
    result = Gate.parse("noninferior(finetuned, teacher, margin=0.05)").evaluate(STATS, one)
    assert result.passed is False
    assert result.clauses[0].explanation.endswith(": 1 paired case, at least 5 are needed -> False")


def test_clauses_over_too_few_paired_cases_fail_closed():
    # 4 cases, all better: a bound could clear the margin, but 4 cases say nothing
    four = compare("finetuned", "teacher", [1.0] * 4, [0.0] * 4, 0.95)
    pairs = pairs_from({("finetuned", "teacher"): four})
    result = Gate.parse(
        "superior(finetuned, teacher, margin=0) and (finetuned - teacher).low > 0"
        " and (finetuned - teacher).n >= 4"
    ).evaluate(STATS, pairs)
    assert result.passed is False
    assert [c.passed for c in result.clauses] == [False, False, True]
    assert result.clauses[0].explanation.endswith(
        ": 4 paired cases, at least 5 are needed -> False"
    )
    assert "too few cases that both finetuned and teacher ran (n=4" in result.clauses[1].explanation
