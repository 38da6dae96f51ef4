"""Graders of tool calls and structured output: ``tool_calls`` and ``json_schema``.

``tool_calls`` compares the reply's calls (``sample.output_tools``) with the expected ones, a
list of ``{name, arguments}`` (``arguments`` an object, or a JSON string; the chat completions
shape ``{"type": "function", "function": {...}}`` is read too; ``[]`` expects no call):

- each expected call is paired with at most one actual call, the pairing that matches the most
  calls exactly (then the most similar arguments), so parallel calls match in any order;
- a pair matches when the names are equal and the arguments are equal as JSON, compared by the
  ``json`` grader's comparison and options (``ignore_order``, ``tolerance``, ``exclude_paths``,
  the paths inside the arguments); an expected call without ``arguments`` matches any;
- score = matched / (expected + unexpected), where an unexpected call is an actual call paired
  with no expected one: calling an extra tool costs as much as missing one, so calling every
  tool cannot earn full credit. It passes only at 1.0 (every call matched, nothing extra).

Failures name each unmatched call on one line, with the arguments' path-by-path diff in the
detail lines (``get_weather.city: expected "Oslo", got "oslo"``).

``json_schema`` checks that the output (``input``, default ``{{sample.output_text}}``; a string
is parsed as JSON, tolerating a fence) is valid against ``schema``, a JSON Schema checked when
the grader is built; a failure names the first error's path.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn

from distill_shapes.tools import InvalidShape, ToolCall, check_schema, schema_error
from pytest_distill.grading.base import Grade, GraderConfigError, Sample, Spec, Template
from pytest_distill.grading.compare import compare_json, parse_model_json
from pytest_distill.text import shorten

REFERENCE: Final = "{{item.reference}}"
EXACT_PAIRING_LIMIT: Final = 10  # calls on the actual side up to which the pairing is exact


@dataclass(frozen=True, slots=True)
class ExpectedCall:
    name: str
    arguments: Any = None
    compared: bool = True
    """False when the reference gives no ``arguments``: any arguments match."""


@dataclass(frozen=True, slots=True)
class _Pair:
    score: float
    """1.0 when the call matches; 0 when the names differ; else in (0, 1), higher for arguments
    that are nearer (so a wrong call is still paired with the one it was meant to be)."""
    equal: bool
    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ToolCallsCheck:
    name: str
    reference: Template
    ignore_order: bool = False
    tolerance: float = 0.0
    exclude_paths: tuple[str, ...] = ()

    def grade(self, sample: Sample, item: Mapping[str, Any]) -> Grade:
        expected = expected_calls(self.reference.resolve(sample, item), self.name, item.get("id"))
        actual = sample.output_tools
        pairs = [[self._pair(want, got) for got in actual] for want in expected]
        pairing = best_pairing(pairs, len(actual))
        matched = sum(1 for i, j in enumerate(pairing) if j is not None and pairs[i][j].equal)
        extra = [got for j, got in enumerate(actual) if j not in pairing]
        total = len(expected) + len(extra)
        score = 1.0 if total == 0 else matched / total
        if score == 1.0:
            return Grade(self.name, 1.0, True)
        problems: list[str] = []
        detail: list[str] = []
        for i, want in enumerate(expected):
            j = pairing[i]
            if j is None:
                shown = _show_call(want.name, want.arguments if want.compared else None)
                problems.append(f"missing call {shown}")
            elif not pairs[i][j].equal:
                problems.append(f"{want.name}: {pairs[i][j].lines[0]}")
                detail += pairs[i][j].lines
        problems += [f"unexpected call {_show_call(got.name, got.arguments)}" for got in extra]
        reason = f"{matched} of {len(expected)} expected tool calls matched"
        reason += f", {len(extra)} unexpected" if extra else ""
        return Grade(self.name, score, False, f"{reason}: {'; '.join(problems)}", tuple(detail))

    def _pair(self, want: ExpectedCall, got: ToolCall) -> _Pair:
        if want.name != got.name:
            return _Pair(0.0, False, (f"expected a call to {want.name}, got {got.name}",))
        try:
            arguments = parse_model_json(got.arguments)
        except ValueError as error:
            text = shorten(got.arguments, 60)
            return _Pair(0.001, False, (f"{got.name}: arguments are not JSON ({error}): {text!r}",))
        if not want.compared:
            return _Pair(1.0, True, ())
        result = compare_json(
            arguments,
            want.arguments,
            ignore_order=self.ignore_order,
            tolerance=self.tolerance,
            exclude_paths=self.exclude_paths,
        )
        if result.equal:
            return _Pair(1.0, True, ())
        lines = tuple(
            line if line.startswith("... and ") else f"{got.name}.{line}" for line in result.lines
        )
        return _Pair(0.001 + 0.998 * result.score, False, lines)


def best_pairing(scores: Sequence[Sequence[_Pair]], actual: int) -> list[int | None]:
    """For each expected call the index of its actual call (or None): the pairing with the most
    exact matches, then the highest summed score. Exact for up to ``EXACT_PAIRING_LIMIT`` actual
    calls (dynamic programming over which actual calls are taken), greedy beyond."""
    if actual > EXACT_PAIRING_LIMIT:
        return _greedy(scores, actual)
    best: dict[int, tuple[tuple[int, float], list[int | None]]] = {0: ((0, 0.0), [])}
    for row in scores:
        step: dict[int, tuple[tuple[int, float], list[int | None]]] = {}
        for taken, ((exact, total), chosen) in best.items():
            options: list[tuple[int, tuple[int, float], int | None]] = [
                (taken, (exact, total), None)
            ]
            for index, pair in enumerate(row):
                if pair.score > 0 and not taken & (1 << index):
                    value = (exact + pair.equal, total + pair.score)
                    options.append((taken | 1 << index, value, index))
            for mask, value, picked in options:
                if mask not in step or value > step[mask][0]:
                    step[mask] = (value, [*chosen, picked])
        best = step
    return max(best.values(), key=lambda entry: entry[0])[1]


def _greedy(scores: Sequence[Sequence[_Pair]], actual: int) -> list[int | None]:
    ranked = sorted(
        (
            (pair.equal, pair.score, i, j)
            for i, row in enumerate(scores)
            for j, pair in enumerate(row)
        ),
        reverse=True,
    )
    pairing: list[int | None] = [None] * len(scores)
    taken: set[int] = set()
    for _, score, i, j in ranked:
        if score > 0 and pairing[i] is None and j not in taken:
            pairing[i] = j
            taken.add(j)
    return pairing


def expected_calls(value: Any, grader: str, case_id: Any) -> tuple[ExpectedCall, ...]:
    """The reference as expected calls: a list (or one) of ``{name, arguments}``."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):  # an unreadable string is reported just below
            value = json.loads(value)
    items = [value] if isinstance(value, Mapping) else value
    if not isinstance(items, list):
        _bad_reference(grader, case_id, f"is {shorten(repr(value), 60)}")
    return tuple(_expected(item, index, grader, case_id) for index, item in enumerate(items))


def _expected(item: Any, index: int, grader: str, case_id: Any) -> ExpectedCall:
    call = item.get("function", item) if isinstance(item, Mapping) else item
    name = call.get("name") if isinstance(call, Mapping) else None
    if not isinstance(name, str) or not name:
        _bad_reference(grader, case_id, f"[{index}] has no 'name'")
    if "arguments" not in call:
        return ExpectedCall(name, compared=False)
    arguments = call["arguments"]
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError as error:
            _bad_reference(grader, case_id, f"[{index}].arguments is not JSON ({error})")
    return ExpectedCall(name, arguments)


def _bad_reference(grader: str, case_id: Any, what: str) -> NoReturn:
    raise GraderConfigError(
        f"grader {grader!r} (tool_calls): the reference of case {case_id!r} {what}; a tool_calls "
        "reference is a list of expected calls; write it as [{name: get_weather, arguments: "
        "{city: Paris}}] ([] when no tool should be called)"
    )


def _show_call(name: str, arguments: Any) -> str:
    if arguments is None:
        return f"{name}(...)"
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return f"{name}({shorten(text, 60)})"


@dataclass(frozen=True, slots=True)
class JsonSchemaCheck:
    name: str
    schema: Mapping[str, Any]
    input: Template

    def grade(self, sample: Sample, item: Mapping[str, Any]) -> Grade:
        value = self.input.resolve(sample, item)
        if isinstance(value, str):
            try:
                value = parse_model_json(value)
            except ValueError as error:
                detail = (f"output: {shorten(value)!r}",)
                return Grade(self.name, 0.0, False, f"output is not valid JSON ({error})", detail)
        invalid = schema_error(value, self.schema)
        if invalid is None:
            return Grade(self.name, 1.0, True)
        return Grade(self.name, 0.0, False, f"output does not match the schema: {invalid}")


def build_tool_calls(spec: Spec) -> ToolCallsCheck:
    exclude = spec.exclude_paths(
        "paths inside the arguments look like items[*].sku or address.city"
    )
    return ToolCallsCheck(
        spec.name,
        spec.template("reference", REFERENCE),
        spec.boolean("ignore_order", False),
        spec.number("tolerance", 0.0),
        exclude,
    )


def build_json_schema(spec: Spec) -> JsonSchemaCheck:
    schema = spec.require(
        "schema",
        "add schema: {...}, the JSON Schema the output must be valid against",
    )
    if not isinstance(schema, Mapping):
        spec.fail(f"has schema={schema!r}", "'schema' is a JSON Schema object", "write one")
    try:
        check_schema(schema, "schema")
    except InvalidShape as error:
        spec.fail(f"has an invalid {error.field} ({error.problem})", error.fix, "fix it")
    return JsonSchemaCheck(spec.name, schema, spec.template("input", "{{sample.output_text}}"))
