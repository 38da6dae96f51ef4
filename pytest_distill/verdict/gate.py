"""The deploy gate: a readable expression over role results, and the statistics behind it.

``finetuned >= 0.95 * teacher and finetuned >= student + 0.10`` is parsed once, checked against
a small grammar (:mod:`pytest_distill.verdict.grammar`; never ``eval``), into a clause tree
(:mod:`pytest_distill.verdict.tree`) that evaluation, explanation, the summary and the report
read. Each operand of a top-level ``and`` is a clause, evaluated and explained on its own; the
gate passes when every clause does. The statistical clauses (``noninferior(...)``,
``superior(...)``, ``(finetuned - teacher).low``) are evaluated by
:mod:`pytest_distill.verdict.clauses`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import pytest

from pytest_distill.verdict import clauses, grammar, tree
from pytest_distill.verdict.clauses import Pairs
from pytest_distill.verdict.grammar import GateSyntaxError
from pytest_distill.verdict.tree import (
    And,
    Arithmetic,
    Compare,
    Condition,
    Constant,
    Difference,
    Metric,
    Not,
    Number,
    Or,
    Sign,
    Test,
)

__all__ = ["Gate", "GateResult", "GateSyntaxError", "RoleStats", "check_gate"]

GATE_FAILED_EXIT_CODE: Final = 6  # pytest's own exit codes are 0-5
DISTILL_FAILED_EXIT_CODE: Final = 7  # --distill could not train or evaluate the student


@dataclass(frozen=True, slots=True)
class RoleStats:
    n: int  # cases with results
    score: float  # mean score
    pass_rate: float
    prompt_tokens: float  # mean per call
    completion_tokens: float  # mean per call
    latency_p50: float  # seconds
    latency_p95: float  # seconds
    cost: float | None = None  # None: no price known for the model
    pass_k: float | None = None  # share of cases whose every repeat passed (pass^k)
    pass_at_k: float | None = None  # share of cases with at least one passing repeat
    errors: int = 0  # cases without a grade (a cassette miss, a failed call or grader)


@dataclass(frozen=True, slots=True)
class ClauseResult:
    text: str
    passed: bool
    explanation: str  # "finetuned >= 0.95 * teacher: 0.620 >= 0.95 * 0.800 = 0.760 -> False"


@dataclass(frozen=True, slots=True)
class GateResult:
    expression: str
    passed: bool | None  # None: not evaluated, or skipped (see reason)
    clauses: tuple[ClauseResult, ...]
    missing_roles: tuple[str, ...]
    reason: str  # one line, starting "gate passed", "gate failed", "gate not evaluated", ...
    skipped: bool = False  # a role it names has no model yet: the items decide the exit code

    @property
    def status(self) -> str:
        """``passed``, ``failed``, ``not evaluated`` (fails closed) or ``skipped``."""
        if self.skipped:
            return "skipped"
        return "not evaluated" if self.passed is None else ("passed" if self.passed else "failed")


@dataclass(frozen=True, slots=True)
class Gate:
    """A gate expression, parsed once: its clauses (the operands of a top-level ``and``) and
    the labels it reads (``finetuned``, ``finetuned[suite]``)."""

    expression: str
    roles: frozenset[str]
    clauses: tuple[Condition, ...]

    @classmethod
    def parse(cls, expression: str) -> Gate:
        # One line (an ini value may continue over several); columns then match the text
        expression = " ".join(expression.split())
        condition = grammar.parse(expression)
        found = condition.values if isinstance(condition, And) else (condition,)
        return cls(expression, frozenset(r.label for r in tree.refs(condition)), found)

    @property
    def role_names(self) -> frozenset[str]:
        """The roles it names, without suites: ``finetuned[suite]`` names ``finetuned``."""
        return frozenset(r.role for clause in self.clauses for r in tree.refs(clause))

    def evaluate(self, stats: Mapping[str, RoleStats], pairs: Pairs | None = None) -> GateResult:
        """``stats`` by label (``finetuned``, ``finetuned[suite]``); ``pairs`` gives the paired
        comparison of two labels on the cases both ran."""
        missing = tuple(sorted(r for r in self.roles if r not in stats or stats[r].n == 0))
        if missing:
            reason = f"gate not evaluated: no results for {', '.join(missing)}"
            return GateResult(self.expression, None, (), missing, reason)
        errored = [
            f"{stats[r].errors} of {stats[r].n} {r}" for r in sorted(self.roles) if stats[r].errors
        ]
        if errored:
            reason = (
                f"gate not evaluated: {', '.join(errored)} cases have no grade (a cassette miss, "
                "a failed model call or a grader that could not run)"
            )
            return GateResult(self.expression, None, (), (), reason)
        unpriced = sorted(r for r in self._uses("cost") if stats[r].cost is None)
        if unpriced:
            reason = f"gate not evaluated: no cost known for {', '.join(unpriced)} (no price set)"
            return GateResult(self.expression, None, (), (), reason)
        facts = _Facts(stats, pairs or clauses.pairs_from({}))
        results = tuple(_clause(node, facts) for node in self.clauses)
        failed = next((clause for clause in results if not clause.passed), None)
        reason = (
            f"gate failed: {failed.explanation}" if failed else f"gate passed: {self.expression}"
        )
        return GateResult(self.expression, failed is None, results, (), reason)

    def tests(self) -> tuple[Test, ...]:
        """The ``noninferior`` / ``superior`` clauses, for the summary's power line."""
        return tuple(
            node for clause in self.clauses for node in tree.walk(clause) if isinstance(node, Test)
        )

    def differences(self) -> tuple[tuple[str, str], ...]:
        """Every paired comparison the gate reads, in the order it names them."""
        found: dict[tuple[str, str], None] = {}
        for clause in self.clauses:
            for node in tree.walk(clause):
                if isinstance(node, Difference):
                    found[(node.a.label, node.b.label)] = None
        for test in self.tests():
            found[(test.a.label, test.b.label)] = None
        return tuple(found)

    def _uses(self, attribute: str) -> set[str]:
        return {
            node.ref.label
            for clause in self.clauses
            for node in tree.walk(clause)
            if isinstance(node, Metric) and node.attribute == attribute
        }


@dataclass(frozen=True, slots=True)
class _Facts:
    """What clauses read: role figures by label, and paired comparisons."""

    stats: Mapping[str, RoleStats]
    pairs: Pairs

    def __getitem__(self, label: str) -> RoleStats:
        return self.stats[label]


def _clause(node: Condition, stats: _Facts) -> ClauseResult:
    text = node.text
    if isinstance(node, Test):
        return ClauseResult(text, *clauses.evaluate(node, stats.pairs))
    try:
        passed = bool(_value(node, stats))
    except ZeroDivisionError:
        return ClauseResult(text, False, f"{text}: divides by zero -> False")
    except LookupError as exc:  # a difference with no paired cases, an unmeasured figure
        return ClauseResult(text, False, f"{text}: {exc} -> False")
    return ClauseResult(text, passed, f"{text}: {_render(node, stats)} -> {passed}")


def _value(node: tree.Node, stats: _Facts) -> Any:
    if isinstance(node, Constant):
        return node.value
    if isinstance(node, Test):
        return clauses.evaluate(node, stats.pairs)[0]
    if isinstance(node, Difference):
        return clauses.difference_value(node, stats.pairs)
    if isinstance(node, Metric):
        value = getattr(stats[node.ref.label], node.attribute)
        if value is None:
            raise LookupError(f"{node.ref.label}.{node.attribute} was not measured")
        return value
    if isinstance(node, Arithmetic):
        return tree.ARITHMETIC[node.op][0](_value(node.left, stats), _value(node.right, stats))
    if isinstance(node, Sign):
        operand = _value(node.operand, stats)
        return -operand if node.op == "-" else operand
    if isinstance(node, Not):
        return not _value(node.operand, stats)
    if isinstance(node, And | Or):
        results = [bool(_value(value, stats)) for value in node.values]
        return all(results) if isinstance(node, And) else any(results)
    assert isinstance(node, Compare)  # the parser admits nothing else
    values = [_value(operand, stats) for operand in node.operands]
    ops = [tree.COMPARISONS[op] for op in node.ops]
    return all(op(a, b) for op, a, b in zip(ops, values, values[1:], strict=False))


def _render(node: tree.Node, stats: _Facts, parent: int = 0) -> str:
    """The expression with each role replaced by its number, e.g. ``0.620 >= 0.95 * 0.800``."""
    if isinstance(node, Constant):
        return repr(node.value)
    if isinstance(node, Test):
        return node.call
    if isinstance(node, Difference):
        return clauses.render_difference(node, stats.pairs)
    if isinstance(node, Metric):
        return _fmt(_value(node, stats))
    if isinstance(node, Arithmetic):
        precedence = tree.ARITHMETIC[node.op][1]
        left = _render(node.left, stats, precedence)
        text = f"{left} {node.op} {_render(node.right, stats, precedence + 1)}"
        return f"({text})" if precedence < parent else text
    if isinstance(node, Sign | Not):
        symbol = "not " if isinstance(node, Not) else node.op
        return f"{symbol}{_render(node.operand, stats, 3)}"
    if isinstance(node, And | Or):
        joiner = " and " if isinstance(node, And) else " or "
        return "(" + joiner.join(_render(value, stats) for value in node.values) + ")"
    assert isinstance(node, Compare)
    parts = [_side(node.operands[0], stats)]
    for op, operand in zip(node.ops, node.operands[1:], strict=True):
        parts += [op, _side(operand, stats)]
    return " ".join(parts)


def _side(node: Number, stats: _Facts) -> str:
    text = _render(node, stats)
    if isinstance(node, Arithmetic | Sign):
        text += f" = {_fmt(_value(node, stats))}"
    return text


def _fmt(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), interpolating linearly between ranks as numpy does."""
    if not values:
        raise ValueError("percentile() of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def check_gate(text: str | None) -> Gate | None:
    """At start-up: the session's gate, parsed once; one that does not parse stops pytest with
    a usage error."""
    if text is None:
        return None
    try:
        return Gate.parse(text)
    except GateSyntaxError as exc:
        raise pytest.UsageError(f"--distill-gate / ini distill_gate: {exc}") from None
