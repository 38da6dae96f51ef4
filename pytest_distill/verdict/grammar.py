"""The gate's grammar: what an expression may say, checked before anything is evaluated.

Role names (a bare role means its mean ``score``), ``role.attribute``, ``role[suite]``,
``(role - role).low``, ``noninferior(...)`` and ``superior(...)`` (their own checks live in
:mod:`pytest_distill.verdict.clauses`), numbers, ``+ - * /``, unary ``-``, comparisons (chained
too), ``and``, ``or``, ``not`` and parentheses. Anything else is a ``GateSyntaxError`` naming the
column, the token and a fix.
"""

from __future__ import annotations

import ast
import difflib
import operator
from collections.abc import Callable
from typing import Any, Final, Literal, get_args

from pytest_distill.verdict import clauses

RoleName = Literal["teacher", "student", "finetuned", "judge"]
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
ARITHMETIC: Final[dict[type[ast.operator], tuple[str, Callable[[Any, Any], Any], int]]] = {
    ast.Add: ("+", operator.add, 1),
    ast.Sub: ("-", operator.sub, 1),
    ast.Mult: ("*", operator.mul, 2),
    ast.Div: ("/", operator.truediv, 2),
}
COMPARISONS: Final[dict[type[ast.cmpop], tuple[str, Callable[[Any, Any], bool]]]] = {
    ast.Lt: ("<", operator.lt),
    ast.LtE: ("<=", operator.le),
    ast.Gt: (">", operator.gt),
    ast.GtE: (">=", operator.ge),
    ast.Eq: ("==", operator.eq),
    ast.NotEq: ("!=", operator.ne),
}


class GateSyntaxError(ValueError):
    """A gate expression outside the grammar: names the expression, the column and the token."""

    def __init__(self, expression: str, column: int, token: str, problem: str, fix: str) -> None:
        self.expression, self.column, self.token = expression, column, token
        super().__init__(
            f"gate {expression!r}: {problem} at column {column} ({token!r}); allowed: "
            f"{_ALLOWED}; {fix}"
        )


def parse(expression: str) -> ast.expr:
    """The expression's tree, checked against the grammar; ``GateSyntaxError`` otherwise."""
    tree = _syntax(expression)
    _check_condition(tree, expression)
    return tree


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


def _fail(node: ast.AST, expression: str, problem: str, fix: str) -> GateSyntaxError:
    token = ast.get_source_segment(expression, node) or type(node).__name__
    return GateSyntaxError(expression, getattr(node, "col_offset", 0) + 1, token, problem, fix)


def _check_condition(node: ast.expr, expression: str) -> None:
    if isinstance(node, ast.BoolOp):
        for value in node.values:
            _check_condition(value, expression)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        _check_condition(node.operand, expression)
    elif isinstance(node, ast.Call):
        for side in node.args:
            if clauses.role_reference(side) is not None:
                _check_role(side, expression)  # type: ignore[arg-type]
        clauses.parse_test(node, lambda n, p, f: _fail(n, expression, p, f))
    elif isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in COMPARISONS:
                raise _fail(
                    node,
                    expression,
                    f"comparison {type(op).__name__} is not allowed",
                    "use < <= > >= == !=",
                )
        for operand in (node.left, *node.comparators):
            _check_number(operand, expression)
    else:
        _check_number(node, expression)
        raise _fail(
            node, expression, "a number is not a condition", "compare it, e.g. 'finetuned >= 0.9'"
        )


def _check_number(node: ast.expr, expression: str) -> None:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return
    if clauses.difference(node) is not None:
        assert isinstance(node, ast.Attribute)
        _check_difference(node, expression)
    elif isinstance(node, ast.Name | ast.Attribute | ast.Subscript):
        _check_role(node, expression)
    elif isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC:
        _check_number(node.left, expression)
        _check_number(node.right, expression)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        _check_number(node.operand, expression)
    elif isinstance(node, ast.Compare | ast.BoolOp) or _is_not(node):
        raise _fail(node, expression, "a condition is used as a number", "compare numbers only")
    else:
        raise _fail(node, expression, f"{_describe(node)} is not allowed", "rewrite that part")


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


def _check_difference(node: ast.Attribute, expression: str) -> None:
    sides = clauses.difference(node)
    assert sides is not None
    for side in sides:
        _check_role(side, expression)  # type: ignore[arg-type]
    if node.attr not in clauses.DIFFERENCE_ATTRIBUTES:
        allowed = ", ".join(clauses.DIFFERENCE_ATTRIBUTES)
        raise _fail(node, expression, f"unknown attribute {node.attr!r}", f"use one of {allowed}")


def _check_role(node: ast.Name | ast.Attribute | ast.Subscript, expression: str) -> None:
    target = node.value if isinstance(node, ast.Attribute) else node
    reference = clauses.role_reference(target)
    if reference is None and isinstance(target, ast.Subscript):
        fix = "write the suite as a name or a string: finetuned[meetings], finetuned['due-dates']"
        raise _fail(target, expression, "a role's suite is a name", fix)
    name = reference[0] if reference is not None else target
    if not isinstance(name, ast.Name) or name.id not in ROLES:
        text = ast.get_source_segment(expression, name) or "?"
        close = difflib.get_close_matches(text, ROLES, n=1)
        fix = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(ROLES)}"
        raise _fail(name, expression, f"unknown role {text!r}", fix)
    if isinstance(node, ast.Attribute) and node.attr not in ATTRIBUTES:
        close = difflib.get_close_matches(node.attr, ATTRIBUTES, n=1)
        fix = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(ATTRIBUTES)}"
        raise _fail(node, expression, f"unknown attribute {node.attr!r}", fix)
