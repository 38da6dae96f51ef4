"""The deploy gate: a readable expression over role results, and the statistics behind it.

``finetuned >= 0.95 * teacher and finetuned >= student + 0.10`` is parsed with ``ast`` and
checked against a small grammar (:mod:`pytest_distill.verdict.grammar`; never ``eval``). Each
operand of a top-level ``and`` is a clause, evaluated and explained on its own; the gate passes
when every clause does. The statistical clauses (``noninferior(...)``, ``superior(...)``,
``(finetuned - teacher).low``) are evaluated by :mod:`pytest_distill.verdict.clauses`.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import pytest

from pytest_distill.verdict import clauses, grammar
from pytest_distill.verdict.grammar import GateSyntaxError

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
    expression: str
    roles: frozenset[str]
    _clauses: tuple[ast.expr, ...]

    @classmethod
    def parse(cls, expression: str) -> Gate:
        # One line (an ini value may continue over several); ast columns then match the text
        expression = " ".join(expression.split())
        tree = grammar.parse(expression)
        nodes = (
            tree.values if isinstance(tree, ast.BoolOp) and isinstance(tree.op, ast.And) else [tree]
        )
        return cls(expression, frozenset(clauses.used_labels(tree)), tuple(nodes))

    def evaluate(
        self, stats: Mapping[str, RoleStats], pairs: clauses.Pairs | None = None
    ) -> GateResult:
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
        results = tuple(_clause(node, self.expression, facts) for node in self._clauses)
        failed = next((clause for clause in results if not clause.passed), None)
        reason = (
            f"gate failed: {failed.explanation}" if failed else f"gate passed: {self.expression}"
        )
        return GateResult(self.expression, failed is None, results, (), reason)

    def tests(self) -> tuple[clauses.Test, ...]:
        """The ``noninferior`` / ``superior`` clauses, for the summary's power line."""
        return tuple(
            clauses.parse_test(node, lambda *_: ValueError())
            for clause in self._clauses
            for node in ast.walk(clause)
            if isinstance(node, ast.Call)
        )

    def differences(self) -> tuple[tuple[str, str], ...]:
        """Every paired comparison the gate reads, in the order it names them."""
        found: dict[tuple[str, str], None] = {}
        for clause in self._clauses:
            for node in ast.walk(clause):
                sides = clauses.difference(node) if isinstance(node, ast.expr) else None
                if sides is not None:
                    found[(clauses.label(sides[0]), clauses.label(sides[1]))] = None
        for test in self.tests():
            found[(test.a, test.b)] = None
        return tuple(found)

    def _uses(self, attribute: str) -> set[str]:
        return {
            clauses.label(node.value)
            for clause in self._clauses
            for node in ast.walk(clause)
            if isinstance(node, ast.Attribute)
            and node.attr == attribute
            and clauses.role_reference(node.value) is not None
        }


@dataclass(frozen=True, slots=True)
class _Facts:
    """What clauses read: role figures by label, and paired comparisons."""

    stats: Mapping[str, RoleStats]
    pairs: clauses.Pairs

    def __getitem__(self, label: str) -> RoleStats:
        return self.stats[label]


def _clause(node: ast.expr, expression: str, stats: _Facts) -> ClauseResult:
    text = ast.get_source_segment(expression, node) or ast.unparse(node)
    if isinstance(node, ast.Call):
        test = clauses.parse_test(node, lambda *_: ValueError())
        return ClauseResult(text, *clauses.evaluate(test, stats.pairs))
    try:
        passed = bool(_value(node, stats))
    except ZeroDivisionError:
        return ClauseResult(text, False, f"{text}: divides by zero -> False")
    except LookupError as exc:  # a difference with no paired cases, an unmeasured figure
        return ClauseResult(text, False, f"{text}: {exc} -> False")
    return ClauseResult(text, passed, f"{text}: {_render(node, stats)} -> {passed}")


def _value(node: ast.expr, stats: _Facts) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Call):
        return clauses.evaluate(clauses.parse_test(node, lambda *_: ValueError()), stats.pairs)[0]
    if clauses.difference(node) is not None:
        assert isinstance(node, ast.Attribute)
        return clauses.difference_value(node, stats.pairs)
    if isinstance(node, ast.Name | ast.Subscript):
        return stats[clauses.label(node)].score
    if isinstance(node, ast.Attribute):
        value = getattr(stats[clauses.label(node.value)], node.attr)
        if value is None:
            raise LookupError(f"{clauses.label(node.value)}.{node.attr} was not measured")
        return value
    if isinstance(node, ast.BinOp):
        return grammar.ARITHMETIC[type(node.op)][1](
            _value(node.left, stats), _value(node.right, stats)
        )
    if isinstance(node, ast.UnaryOp):
        operand = _value(node.operand, stats)
        return (
            not operand
            if isinstance(node.op, ast.Not)
            else (-operand if isinstance(node.op, ast.USub) else operand)
        )
    if isinstance(node, ast.BoolOp):
        results = [bool(_value(value, stats)) for value in node.values]
        return all(results) if isinstance(node.op, ast.And) else any(results)
    assert isinstance(node, ast.Compare)  # the grammar check admits nothing else
    values = [_value(operand, stats) for operand in (node.left, *node.comparators)]
    ops = [grammar.COMPARISONS[type(op)][1] for op in node.ops]
    return all(op(a, b) for op, a, b in zip(ops, values, values[1:], strict=False))


def _render(node: ast.expr, stats: _Facts, parent: int = 0) -> str:
    """The expression with each role replaced by its number, e.g. ``0.620 >= 0.95 * 0.800``."""
    if isinstance(node, ast.Constant):
        return repr(node.value)
    if isinstance(node, ast.Call):
        return ast.unparse(node)
    if clauses.difference(node) is not None:
        assert isinstance(node, ast.Attribute)
        return clauses.render_difference(node, stats.pairs)
    if isinstance(node, ast.Name | ast.Attribute | ast.Subscript):
        return _fmt(_value(node, stats))
    if isinstance(node, ast.BinOp):
        symbol, _, precedence = grammar.ARITHMETIC[type(node.op)]
        left = _render(node.left, stats, precedence)
        text = f"{left} {symbol} {_render(node.right, stats, precedence + 1)}"
        return f"({text})" if precedence < parent else text
    if isinstance(node, ast.UnaryOp):
        symbol = (
            "not "
            if isinstance(node.op, ast.Not)
            else "-"
            if isinstance(node.op, ast.USub)
            else "+"
        )
        return f"{symbol}{_render(node.operand, stats, 3)}"
    if isinstance(node, ast.BoolOp):
        joiner = " and " if isinstance(node.op, ast.And) else " or "
        return "(" + joiner.join(_render(value, stats) for value in node.values) + ")"
    assert isinstance(node, ast.Compare)
    parts = [_side(node.left, stats)]
    for op, operand in zip(node.ops, node.comparators, strict=True):
        parts += [grammar.COMPARISONS[type(op)][0], _side(operand, stats)]
    return " ".join(parts)


def _side(node: ast.expr, stats: _Facts) -> str:
    text = _render(node, stats)
    if isinstance(node, ast.BinOp | ast.UnaryOp):
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


def check_gate(text: str | None) -> None:
    """At start-up: a gate that does not parse stops pytest with a usage error."""
    if text is None:
        return
    try:
        Gate.parse(text)
    except GateSyntaxError as exc:
        raise pytest.UsageError(f"--distill-gate / ini distill_gate: {exc}") from None
