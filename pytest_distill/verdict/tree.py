"""The gate's clause tree: a gate expression parsed once into typed, immutable nodes.

:func:`pytest_distill.verdict.grammar.parse` builds it (the only parser); evaluation and
explanation (:mod:`pytest_distill.verdict.gate`), the statistical clauses
(:mod:`pytest_distill.verdict.clauses`), the summary and the report read it.

Conditions (:data:`Condition`) are ``and`` / ``or`` / ``not``, comparisons and the tests
``noninferior`` / ``superior``; numbers (:data:`Number`) are constants, a role's figure, an end of
a paired difference's interval, arithmetic and a sign.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

TESTS: Final = {"noninferior": -1, "superior": +1}  # the sign of the margin to clear
DIFFERENCE_ATTRIBUTES: Final = ("low", "high", "mean", "se", "n")
# symbol -> (function, precedence)
ARITHMETIC: Final[dict[str, tuple[Callable[[Any, Any], Any], int]]] = {
    "+": (operator.add, 1),
    "-": (operator.sub, 1),
    "*": (operator.mul, 2),
    "/": (operator.truediv, 2),
}
COMPARISONS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclass(frozen=True, slots=True)
class Ref:
    """A role, or a role on one suite: ``finetuned``, ``finetuned[meetings]``."""

    role: str
    suite: str | None = None

    @property
    def label(self) -> str:
        return self.role if self.suite is None else f"{self.role}[{self.suite}]"


@dataclass(frozen=True, slots=True)
class Constant:
    value: int | float


@dataclass(frozen=True, slots=True)
class Metric:
    """``finetuned`` (its mean ``score``) or ``finetuned.prompt_tokens``."""

    ref: Ref
    attribute: str = "score"


@dataclass(frozen=True, slots=True)
class Difference:
    """``(finetuned - teacher).low``: a figure of the paired difference ``a - b``."""

    a: Ref
    b: Ref
    attribute: str


@dataclass(frozen=True, slots=True)
class Arithmetic:
    op: str  # + - * /
    left: Number
    right: Number


@dataclass(frozen=True, slots=True)
class Sign:
    op: str  # - or +
    operand: Number


@dataclass(frozen=True, slots=True)
class Compare:
    """``a <= b``, chained too: ``0.5 <= finetuned <= 0.7``."""

    operands: tuple[Number, ...]
    ops: tuple[str, ...]  # < <= > >= == !=, one fewer than the operands
    text: str  # as written in the expression


@dataclass(frozen=True, slots=True)
class Test:
    """``noninferior(a, b, margin=m)`` or ``superior(...)``."""

    name: str
    a: Ref
    b: Ref
    margin: float
    text: str  # as written in the expression
    call: str  # as Python writes it back: ``noninferior(finetuned, teacher, margin=0.05)``

    @property
    def threshold(self) -> float:
        return TESTS[self.name] * self.margin


@dataclass(frozen=True, slots=True)
class And:
    values: tuple[Condition, ...]
    text: str


@dataclass(frozen=True, slots=True)
class Or:
    values: tuple[Condition, ...]
    text: str


@dataclass(frozen=True, slots=True)
class Not:
    operand: Condition
    text: str


Number = Constant | Metric | Difference | Arithmetic | Sign
Condition = And | Or | Not | Compare | Test
Node = Number | Condition


def children(node: Node) -> tuple[Node, ...]:
    if isinstance(node, And | Or):
        return node.values
    if isinstance(node, Not):
        return (node.operand,)
    if isinstance(node, Compare):
        return node.operands
    if isinstance(node, Arithmetic):
        return (node.left, node.right)
    if isinstance(node, Sign):
        return (node.operand,)
    return ()


def walk(node: Node) -> Iterator[Node]:
    """Every node, breadth first (the order the summary and the report list pairs in)."""
    queue: deque[Node] = deque([node])
    while queue:
        found = queue.popleft()
        queue.extend(children(found))
        yield found


def refs(node: Node) -> Iterator[Ref]:
    """Every role reference under ``node``."""
    for found in walk(node):
        if isinstance(found, Metric):
            yield found.ref
        elif isinstance(found, Difference | Test):
            yield found.a
            yield found.b
