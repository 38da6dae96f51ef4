"""The gate's statistical clauses, evaluated over the clause tree: role references with a suite,
paired differences and the ``noninferior`` / ``superior`` tests.
:mod:`pytest_distill.verdict.gate` dispatches here.

- ``finetuned[meetings]`` is the fine-tuned role on suite ``meetings`` only (a suite whose
  name is no Python name is written as a string: ``finetuned["due-dates"]``);
- ``(finetuned - teacher).low`` is an end of the interval of the paired difference (``.low``,
  ``.high``, ``.mean``, ``.se``, ``.n``), over the cases both ran;
- ``noninferior(finetuned, teacher, margin=0.05)`` passes when the one-sided lower confidence
  bound of ``finetuned - teacher`` is above ``-margin``; ``superior(...)`` when it is above
  ``+margin``.

A clause over fewer than ``MIN_PAIRED_CASES`` paired cases (cases where either role errored
are no pairs) fails: too few cases say nothing either way. ``.n`` is read at any count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from pytest_distill.verdict.stats import MIN_PAIRED_CASES, Pair, signed
from pytest_distill.verdict.tree import Difference, Test


class Pairs(Protocol):
    def __call__(self, a: str, b: str) -> Pair | None: ...


def evaluate(test: Test, pairs: Pairs) -> tuple[bool, str]:
    """Whether the clause passes, and its explanation with the numbers."""
    pair = pairs(test.a.label, test.b.label)
    head = f"{test.name}({test.a.label}, {test.b.label}, margin={test.margin:g})"
    if pair is None or pair.too_few:
        n = 0 if pair is None else pair.n
        cases = "1 paired case" if n == 1 else f"{n} paired cases"
        return False, f"{head}: {cases}, at least {MIN_PAIRED_CASES} are needed -> False"
    passed = pair.lower_bound > test.threshold
    return passed, (
        f"{head}: {pair.label} = {signed(pair.mean)}, one-sided {pair.confidence:.0%} lower "
        f"bound {signed(pair.lower_bound)} {'>' if passed else '<='} {signed(test.threshold)} "
        f"(n={pair.n} paired, {pair.better} better, {pair.worse} worse) -> {passed}"
    )


def difference_value(node: Difference, pairs: Pairs) -> float:
    pair = pairs(node.a.label, node.b.label)
    if pair is None:
        raise LookupError(f"no cases that both {node.a.label} and {node.b.label} ran")
    if pair.too_few and node.attribute != "n":
        raise LookupError(
            f"too few cases that both {node.a.label} and {node.b.label} ran "
            f"(n={pair.n}, at least {MIN_PAIRED_CASES} are needed)"
        )
    return float(getattr(pair, node.attribute))


def render_difference(node: Difference, pairs: Pairs) -> str:
    """``(finetuned - teacher).low`` -> ``[+0.031]``... with the whole interval, for reading."""
    pair = pairs(node.a.label, node.b.label)
    if pair is None:
        return "?"
    if pair.too_few:
        return f"{pair.n}" if node.attribute == "n" else f"? (too few cases, n={pair.n})"
    value = getattr(pair, node.attribute)
    shown = str(value) if node.attribute == "n" else signed(value)
    return (
        f"{shown} ({pair.label} {signed(pair.mean)} {pair.confidence:.0%} CI "
        f"[{signed(pair.low)}, {signed(pair.high)}] n={pair.n})"
    )


def pairs_from(mapping: Mapping[tuple[str, str], Pair]) -> Pairs:
    def lookup(a: str, b: str) -> Pair | None:
        return mapping.get((a, b))

    return lookup
