"""The gate's parser: what an expression may say, checked while it is parsed, once, into the
clause tree (:mod:`pytest_distill.verdict.tree`) that everything else reads.

Role names (a bare role means its mean ``score``), ``role.attribute``, ``role[suite]``,
``(role - role).low``, ``noninferior(...)`` and ``superior(...)``, numbers, ``+ - * /``, unary
``-``, comparisons (chained too), ``and``, ``or``, ``not`` and parentheses. Anything else is a
``GateSyntaxError`` naming the column, the token and a fix. Python's ``ast`` reads the text
(never ``eval``); no ``ast`` node leaves this module.
"""

from __future__ import annotations

import ast
import difflib
from typing import Final, Literal, get_args

from pytest_distill.verdict import tree
from pytest_distill.verdict.tree import DIFFERENCE_ATTRIBUTES, TESTS

RoleName = Literal["teacher", "student", "sft", "finetuned", "judge"]
Attribute = Literal[
    "score",
    "pass_rate",
    "n",
    "prompt_tokens",
    "completion_tokens",
    "latency_p50",
    "latency_p95",
    "cost",
    "pass_k",
    "pass_at_k",
]
ROLES: Final[tuple[str, ...]] = get_args(RoleName)
ATTRIBUTES: Final[tuple[str, ...]] = get_args(Attribute)
_ALLOWED = (
    f"role names ({', '.join(ROLES)}), role.attribute ({', '.join(ATTRIBUTES)}), role[suite], "
    "(role - role).low/.high, noninferior(a, b, margin=m), superior(a, b, margin=m), numbers, "
    "+ - * /, comparisons, and/or/not, parentheses"
)
_ARITHMETIC: Final[dict[type[ast.operator], str]] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
}
_COMPARISONS: Final[dict[type[ast.cmpop], str]] = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
}


class GateSyntaxError(ValueError):
    """A gate expression outside the grammar: names the expression, the column and the token."""

    def __init__(self, expression: str, column: int, token: str, problem: str, fix: str) -> None:
        self.expression, self.column, self.token = expression, column, token
        super().__init__(
            f"gate {expression!r}: {problem} at column {column} ({token!r}); allowed: "
            f"{_ALLOWED}; {fix}"
        )


def parse(expression: str) -> tree.Condition:
    """The expression's clause tree, checked against the grammar; ``GateSyntaxError``
    otherwise."""
    return _Parser(expression).condition(_syntax(expression))


def _syntax(expression: str) -> ast.expr:
    if not expression:
        raise GateSyntaxError(expression, 1, "", "the expression is empty", "write a condition")
    try:
        return ast.parse(expression, mode="eval").body
    except SyntaxError as error:
        column = _break_column(expression, error)
        token = expression[column - 1 : column + 1] or "end of expression"
        fix = "write it like 'finetuned >= 0.95 * teacher and student >= 0.5'"
        raise GateSyntaxError(expression, column, token, "invalid syntax", fix) from None


def _break_column(expression: str, error: SyntaxError) -> int:
    """Where the expression breaks (1-based): Python reports one that ends too early
    (``finetuned >= 0.9 *``) at offset 0; that one breaks at its end."""
    if error.lineno == 1 and error.offset:
        return min(error.offset, len(expression) + 1)
    return len(expression) + 1


def _role_reference(node: ast.expr) -> tuple[ast.Name, str | None] | None:
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


def _difference(node: ast.expr) -> tuple[ast.expr, ast.expr] | None:
    """``(a - b).attribute`` with two role references: the two sides, else None."""
    if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.BinOp)):
        return None
    inner = node.value
    if not isinstance(inner.op, ast.Sub):
        return None
    if _role_reference(inner.left) is None or _role_reference(inner.right) is None:
        return None
    return inner.left, inner.right


class _Parser:
    """One pass over Python's syntax tree: each node is checked, then becomes a tree node."""

    def __init__(self, expression: str) -> None:
        self.expression = expression

    def fail(self, node: ast.AST, problem: str, fix: str) -> GateSyntaxError:
        token = ast.get_source_segment(self.expression, node) or type(node).__name__
        column = getattr(node, "col_offset", 0) + 1
        return GateSyntaxError(self.expression, column, token, problem, fix)

    def text(self, node: ast.expr) -> str:
        return ast.get_source_segment(self.expression, node) or ast.unparse(node)

    def condition(self, node: ast.expr) -> tree.Condition:
        if isinstance(node, ast.BoolOp):
            values = tuple(self.condition(value) for value in node.values)
            kind = tree.And if isinstance(node.op, ast.And) else tree.Or
            return kind(values, self.text(node))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return tree.Not(self.condition(node.operand), self.text(node))
        if isinstance(node, ast.Call):
            for side in node.args:
                if _role_reference(side) is not None:
                    self.role(side)  # type: ignore[arg-type]
            return self.test(node)
        if isinstance(node, ast.Compare):
            for op in node.ops:
                if type(op) not in _COMPARISONS:
                    raise self.fail(
                        node,
                        f"comparison {type(op).__name__} is not allowed",
                        "use < <= > >= == !=",
                    )
            operands = tuple(self.number(operand) for operand in (node.left, *node.comparators))
            ops = tuple(_COMPARISONS[type(op)] for op in node.ops)
            return tree.Compare(operands, ops, self.text(node))
        self.number(node)
        raise self.fail(node, "a number is not a condition", "compare it, e.g. 'finetuned >= 0.9'")

    def number(self, node: ast.expr) -> tree.Number:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            assert isinstance(node.value, int | float)
            return tree.Constant(node.value)
        if _difference(node) is not None:
            assert isinstance(node, ast.Attribute)
            return self.difference(node)
        if isinstance(node, ast.Name | ast.Attribute | ast.Subscript):
            return self.role(node)
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            left, right = self.number(node.left), self.number(node.right)
            return tree.Arithmetic(_ARITHMETIC[type(node.op)], left, right)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            operand = self.number(node.operand)
            return tree.Sign("-" if isinstance(node.op, ast.USub) else "+", operand)
        if isinstance(node, ast.Compare | ast.BoolOp) or _is_not(node):
            raise self.fail(node, "a condition is used as a number", "compare numbers only")
        raise self.fail(node, f"{_describe(node)} is not allowed", "rewrite that part")

    def difference(self, node: ast.Attribute) -> tree.Difference:
        sides = _difference(node)
        assert sides is not None
        a, b = (self.role(side).ref for side in sides)  # type: ignore[arg-type]
        if node.attr not in DIFFERENCE_ATTRIBUTES:
            allowed = ", ".join(DIFFERENCE_ATTRIBUTES)
            raise self.fail(node, f"unknown attribute {node.attr!r}", f"use one of {allowed}")
        return tree.Difference(a, b, node.attr)

    def role(self, node: ast.Name | ast.Attribute | ast.Subscript) -> tree.Metric:
        target = node.value if isinstance(node, ast.Attribute) else node
        reference = _role_reference(target)
        if reference is None and isinstance(target, ast.Subscript):
            fix = (
                "write the suite as a name or a string: finetuned[meetings], finetuned['due-dates']"
            )
            raise self.fail(target, "a role's suite is a name", fix)
        name = reference[0] if reference is not None else target
        if not isinstance(name, ast.Name) or name.id not in ROLES:
            text = ast.get_source_segment(self.expression, name) or "?"
            close = difflib.get_close_matches(text, ROLES, n=1)
            fix = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(ROLES)}"
            raise self.fail(name, f"unknown role {text!r}", fix)
        if isinstance(node, ast.Attribute) and node.attr not in ATTRIBUTES:
            close = difflib.get_close_matches(node.attr, ATTRIBUTES, n=1)
            fix = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(ATTRIBUTES)}"
            raise self.fail(node, f"unknown attribute {node.attr!r}", fix)
        assert reference is not None
        ref = tree.Ref(name.id, reference[1])
        return tree.Metric(ref, node.attr) if isinstance(node, ast.Attribute) else tree.Metric(ref)

    def test(self, node: ast.Call) -> tree.Test:
        name = node.func.id if isinstance(node.func, ast.Name) else ""
        usage = f"write it like '{name or 'noninferior'}(finetuned, teacher, margin=0.05)'"
        if name not in TESTS:
            raise self.fail(
                node.func, f"unknown function {name or '?'!r}", f"use {' or '.join(TESTS)}"
            )
        margins = [k.value for k in node.keywords if k.arg == "margin"]
        if len(node.args) != 2 or len(margins) != 1 or len(node.keywords) != 1:
            raise self.fail(node, f"{name}() takes two roles and margin=", usage)
        refs = []
        for side in node.args:
            reference = _role_reference(side)
            if reference is None:
                raise self.fail(side, f"{name}() compares roles", usage)
            refs.append(tree.Ref(reference[0].id, reference[1]))
        margin = margins[0]
        if isinstance(margin, ast.UnaryOp) and isinstance(margin.op, ast.USub):
            raise self.fail(
                margin, "margin must not be negative", "a margin is a distance, e.g. 0.05"
            )
        if not (isinstance(margin, ast.Constant) and type(margin.value) in (int, float)):
            raise self.fail(margin, "margin must be a number", usage)
        value = margin.value
        assert isinstance(value, int | float)
        a, b = refs
        return tree.Test(name, a, b, float(value), self.text(node), ast.unparse(node))


def _is_not(node: ast.expr) -> bool:
    return isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not)


def _describe(node: ast.expr) -> str:
    if isinstance(node, ast.UnaryOp):
        return f"operator {type(node.op).__name__}"
    if isinstance(node, ast.BinOp):
        return f"operator {type(node.op).__name__}"
    if isinstance(node, ast.Constant):
        return f"the constant {node.value!r}"
    return {ast.Call: "a function call", ast.Subscript: "indexing"}.get(type(node), "this")
