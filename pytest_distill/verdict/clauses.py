"""The gate's statistical grammar: role references with a suite, paired differences and the
``noninferior`` / ``superior`` clauses. :mod:`pytest_distill.verdict.gate` dispatches here.

- ``finetuned[meetings]`` is the fine-tuned role on suite ``meetings`` only (a suite whose
  name is no Python name is written as a string: ``finetuned["due-dates"]``);
- ``(finetuned - teacher).low`` is an end of the interval of the paired difference (``.low``,
  ``.high``, ``.mean``, ``.se``, ``.n``), over the cases both ran;
- ``noninferior(finetuned, teacher, margin=0.05)`` passes when the one-sided lower confidence
  bound of ``finetuned - teacher`` is above ``-margin``; ``superior(...)`` when it is above
  ``+margin``.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from pytest_distill.verdict.stats import Pair, signed

TESTS: Final = {"noninferior": -1, "superior": +1}  # the sign of the margin to clear
DIFFERENCE_ATTRIBUTES: Final = ("low", "high", "mean", "se", "n")
Fail = Callable[[ast.AST, str, str], Exception]  # (node, problem, fix) -> the syntax error


class Pairs(Protocol):
    def __call__(self, a: str, b: str) -> Pair | None: ...


@dataclass(frozen=True, slots=True)
class Test:
    """A parsed ``noninferior(a, b, margin=m)`` or ``superior(...)``."""

    name: str
    a: str
    b: str
    margin: float

    @property
    def threshold(self) -> float:
        return TESTS[self.name] * self.margin


def role_reference(node: ast.expr) -> tuple[ast.Name, str | None] | None:
    """``finetuned`` or ``finetuned[suite]``: the role's name node and the suite, else None."""
    if isinstance(node, ast.Name):
        return node, None
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        key = node.slice
        if isinstance(key, ast.Name):
            return node.value, key.id
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            return node.value, key.value
    return None


def label(node: ast.expr) -> str:
    found = role_reference(node)
    assert found is not None  # the grammar check admitted only role references here
    role, suite = found
    return role.id if suite is None else f"{role.id}[{suite}]"


def difference(node: ast.expr) -> tuple[ast.expr, ast.expr] | None:
    """``(a - b).attribute`` with two role references: the two sides, else None."""
    if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.BinOp)):
        return None
    inner = node.value
    if not isinstance(inner.op, ast.Sub):
        return None
    if role_reference(inner.left) is None or role_reference(inner.right) is None:
        return None
    return inner.left, inner.right


def parse_test(node: ast.Call, fail: Fail) -> Test:
    name = node.func.id if isinstance(node.func, ast.Name) else ""
    usage = f"write it like '{name or 'noninferior'}(finetuned, teacher, margin=0.05)'"
    if name not in TESTS:
        raise fail(node.func, f"unknown function {name or '?'!r}", f"use {' or '.join(TESTS)}")
    margins = [k.value for k in node.keywords if k.arg == "margin"]
    if len(node.args) != 2 or len(margins) != 1 or len(node.keywords) != 1:
        raise fail(node, f"{name}() takes two roles and margin=", usage)
    for side in node.args:
        if role_reference(side) is None:
            raise fail(side, f"{name}() compares roles", usage)
    margin = margins[0]
    if isinstance(margin, ast.UnaryOp) and isinstance(margin.op, ast.USub):
        raise fail(margin, "margin must not be negative", "a margin is a distance, e.g. 0.05")
    if not (isinstance(margin, ast.Constant) and type(margin.value) in (int, float)):
        raise fail(margin, "margin must be a number", usage)
    value = margin.value
    assert isinstance(value, int | float)
    return Test(name, label(node.args[0]), label(node.args[1]), float(value))


def evaluate(test: Test, pairs: Pairs) -> tuple[bool, str]:
    """Whether the clause passes, and its explanation with the numbers."""
    pair = pairs(test.a, test.b)
    head = f"{test.name}({test.a}, {test.b}, margin={test.margin:g})"
    if pair is None or pair.n < 2:
        n = 0 if pair is None else pair.n
        cases = "1 paired case" if n == 1 else f"{n} paired cases"
        return False, f"{head}: {cases}, at least 2 are needed -> False"
    passed = pair.lower_bound > test.threshold
    return passed, (
        f"{head}: {pair.label} = {signed(pair.mean)}, one-sided {pair.confidence:.0%} lower "
        f"bound {signed(pair.lower_bound)} {'>' if passed else '<='} {signed(test.threshold)} "
        f"(n={pair.n} paired, {pair.better} better, {pair.worse} worse) -> {passed}"
    )


def difference_value(node: ast.Attribute, pairs: Pairs) -> float:
    sides = difference(node)
    assert sides is not None
    pair = pairs(label(sides[0]), label(sides[1]))
    if pair is None:
        raise LookupError(f"no cases that both {label(sides[0])} and {label(sides[1])} ran")
    return float(getattr(pair, node.attr))


def render_difference(node: ast.Attribute, pairs: Pairs) -> str:
    """``(finetuned - teacher).low`` -> ``[+0.031]``... with the whole interval, for reading."""
    sides = difference(node)
    assert sides is not None
    pair = pairs(label(sides[0]), label(sides[1]))
    if pair is None:
        return "?"
    value = getattr(pair, node.attr)
    shown = str(value) if node.attr == "n" else signed(value)
    return (
        f"{shown} ({pair.label} {signed(pair.mean)} {pair.confidence:.0%} CI "
        f"[{signed(pair.low)}, {signed(pair.high)}] n={pair.n})"
    )


def used_labels(tree: ast.expr) -> set[str]:
    """Every role reference in the expression: the roles (and role[suite]s) it needs."""
    return {
        label(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.expr)
        and role_reference(node) is not None
        and not (isinstance(node, ast.Name) and _is_part_of_subscript(node, tree))
        and not (isinstance(node, ast.Name) and node.id in TESTS)
    }


def _is_part_of_subscript(name: ast.Name, tree: ast.expr) -> bool:
    return any(
        isinstance(node, ast.Subscript) and (node.value is name or node.slice is name)
        for node in ast.walk(tree)
    )


def pairs_from(mapping: Mapping[tuple[str, str], Pair]) -> Pairs:
    def lookup(a: str, b: str) -> Pair | None:
        return mapping.get((a, b))

    return lookup
