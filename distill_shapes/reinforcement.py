"""Reinforcement fine-tuning: OpenAI's prompt lines, and its grader JSON.

A line is one prompt the model answers during training, and the fields its grader reads::

    {"messages": [{"role": "user", "content": "..."}], "tools": [...],
     "reference": "...", "any_field": ...}

Every key other than ``messages``, ``tools`` and ``parallel_tool_calls`` is the grader's
``item`` (``{{item.reference}}``). The rules, each reported with its line
(``InvalidTrainingFile``): ``messages`` follow the chat file's rules and do not end with an
assistant message (the model writes the answer); at least ``training.MIN_EXAMPLES`` lines.

The grader is OpenAI's grader JSON: one grader (``string_check``, ``text_similarity``,
``python``, ``score_model``, ``label_model``, or a type a grading library adds), or ``multi``:
named ``graders`` whose scores ``calculate_output`` combines (``+ - * /``, numbers, the
graders' names, ``min``, ``max``, ``abs``). ``grader_json`` writes one from a suite's grader
specs; ``parse_grader`` checks one and gives its parts; ``combine_scores`` evaluates a
``calculate_output`` over the graders' scores.
"""

from __future__ import annotations

import ast
import json
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from distill_shapes.tools import FunctionTool, InvalidShape
from distill_shapes.training import (
    InvalidTrainingFile,
    Message,
    answers,
    enough,
    parse_conversation,
)

PROMPT_KEYS: Final = frozenset({"messages", "tools", "parallel_tool_calls"})
OPENAI_GRADERS: Final = frozenset(
    {"string_check", "text_similarity", "python", "score_model", "label_model"}
)
"""The grader types OpenAI's reinforcement jobs take (besides ``multi``)."""


@dataclass(frozen=True, slots=True)
class RewardPrompt:
    """One line: the conversation to answer, and the fields its grader reads as ``item``."""

    messages: tuple[Message, ...]
    item: Mapping[str, Any]
    line: int | None = None
    tools: tuple[FunctionTool, ...] = ()
    parallel_tool_calls: bool | None = None
    raw_messages: tuple[Mapping[str, Any], ...] = field(default=(), compare=False)
    """The messages as the line holds them (for a chat template)."""


@dataclass(frozen=True, slots=True)
class GraderJson:
    """A checked grader: ``graders`` by name (one for a single grader), and the formula that
    combines their scores (``None`` for a single grader: its score is the reward)."""

    name: str
    graders: Mapping[str, Mapping[str, Any]]
    calculate_output: str | None


def reinforcement_line(
    messages: Sequence[Mapping[str, Any]],
    item: Mapping[str, Any],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    parallel_tool_calls: bool | None = None,
) -> dict[str, Any]:
    """One line of the file: the messages, then ``item``'s fields at the top level."""
    clash = sorted(PROMPT_KEYS & set(item))
    if clash:
        raise ValueError(f"item fields {clash} would overwrite the prompt's keys; rename them")
    line: dict[str, Any] = {"messages": [dict(message) for message in messages]}
    if tools:
        line["tools"] = [dict(tool) for tool in tools]
    if parallel_tool_calls is not None:
        line["parallel_tool_calls"] = parallel_tool_calls
    line.update(item)
    return line


def parse_reinforcement_file(data: bytes) -> list[RewardPrompt]:
    """Every prompt of a reinforcement JSONL, or ``InvalidTrainingFile`` at the first fault."""
    return parse_reinforcement_lines(data.split(b"\n"))


def parse_reinforcement_lines(lines: Iterable[bytes | str]) -> list[RewardPrompt]:
    prompts = list(iter_prompts(lines))
    enough(len(prompts))
    return prompts


def iter_prompts(lines: Iterable[bytes | str]) -> Iterator[RewardPrompt]:
    """The prompts of the lines, checked one at a time; blank lines are skipped."""
    for number, raw in enumerate(lines, 1):
        line = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        if line.strip():
            yield _prompt(number, line)


def _prompt(number: int, line: str) -> RewardPrompt:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidTrainingFile(number, f"not valid JSON ({exc.msg}).") from None
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
        fix = (
            " (it looks like a preference line; send it with method type `dpo`)"
            if isinstance(record, dict) and "preferred_output" in record
            else ""
        )
        raise InvalidTrainingFile(number, f"`messages` must be a non-empty list of messages{fix}.")
    parsed, tools, parallel = parse_conversation(number, record)
    if parsed[-1].role == "assistant":
        raise InvalidTrainingFile(
            number,
            f"messages[{len(parsed) - 1}] is an assistant message; a reinforcement prompt "
            "ends where the model answers (drop the answer; put what the grader compares "
            "against in a field such as `reference`).",
        )
    answers(number, parsed)
    item = {key: value for key, value in record.items() if key not in PROMPT_KEYS}
    return RewardPrompt(parsed, item, number, tools, parallel, tuple(messages))


def grader_json(specs: Sequence[Mapping[str, Any]], name: str = "suite") -> dict[str, Any]:
    """OpenAI's grader JSON for a suite's grader specs: the one grader itself, or ``multi`` over
    all of them (named by their ``name``, made unique) with their mean as ``calculate_output``."""
    if not specs:
        raise ValueError("a reinforcement job needs at least one grader")
    named = _named(specs)
    if len(named) == 1:
        ((key, spec),) = named.items()
        return {**spec, "name": str(spec.get("name") or key)}
    formula = "(" + " + ".join(named) + f") / {len(named)}"
    return {"type": "multi", "name": name, "graders": named, "calculate_output": formula}


def parse_grader(value: Any, where: str = "grader") -> GraderJson:
    """A grader JSON checked: a ``type`` on every grader, a ``multi``'s ``graders`` (an object by
    name, or one grader) and a ``calculate_output`` that names only them."""
    if not isinstance(value, Mapping) or not isinstance(value.get("type"), str):
        raise InvalidShape(where, "is not a grader", "write a grader object with a `type`")
    name = str(value.get("name") or value["type"])
    if value["type"] != "multi":
        return GraderJson(name, {_identifier(name): dict(value)}, None)
    graders = value.get("graders")
    if isinstance(graders, Mapping) and isinstance(graders.get("type"), str):
        graders = {_identifier(str(graders.get("name") or graders["type"])): graders}
    if not isinstance(graders, Mapping) or not graders:
        raise InvalidShape(f"{where}.graders", "is not an object", "write the graders by name")
    for key, grader in graders.items():
        if not isinstance(grader, Mapping) or not isinstance(grader.get("type"), str):
            raise InvalidShape(
                f"{where}.graders.{key}", "is not a grader", "write a grader object with a `type`"
            )
        if grader["type"] == "multi":
            raise InvalidShape(
                f"{where}.graders.{key}",
                "is a multi grader",
                "list its graders here instead: multi graders do not nest",
            )
    formula = value.get("calculate_output")
    if not isinstance(formula, str) or not formula.strip():
        raise InvalidShape(
            f"{where}.calculate_output", "is missing", "write a formula over the graders' names"
        )
    try:
        combine_scores(formula, dict.fromkeys(graders, 1.0))
    except ValueError as error:
        raise InvalidShape(
            f"{where}.calculate_output",
            str(error),
            "write + - * /, numbers, the graders' names, min, max or abs",
        ) from None
    return GraderJson(name, {str(k): dict(v) for k, v in graders.items()}, formula)


def combine_scores(formula: str, scores: Mapping[str, float]) -> float:
    """``calculate_output`` evaluated over the graders' scores; ``ValueError`` names what it
    cannot evaluate (only arithmetic, numbers, the scores' names, min, max and abs)."""
    try:
        tree = ast.parse(formula.strip(), mode="eval")
    except SyntaxError as error:
        raise ValueError(f"{formula!r} is not a formula ({error.msg})") from None
    return float(_evaluate(tree.body, scores, formula))


_BINARY: Final[dict[type, Callable[[float, float], float]]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_FUNCTIONS: Final[dict[str, Callable[..., float]]] = {"min": min, "max": max, "abs": abs}


def _evaluate(node: ast.expr, scores: Mapping[str, float], formula: str) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.Name):
        if node.id not in scores:
            raise ValueError(f"{node.id!r} is not a grader here (graders: {', '.join(scores)})")
        return scores[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left = _evaluate(node.left, scores, formula)
        right = _evaluate(node.right, scores, formula)
        if isinstance(node.op, ast.Div) and right == 0:
            return 0.0
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _evaluate(node.operand, scores, formula)
        return -value if isinstance(node.op, ast.USub) else value
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and node.args
        and not node.keywords
    ):
        return _FUNCTIONS[node.func.id](*(_evaluate(arg, scores, formula) for arg in node.args))
    raise ValueError(
        f"{ast.get_source_segment(formula.strip(), node) or type(node).__name__!r} is not "
        "allowed (use + - * /, numbers, the graders' names, min, max, abs)"
    )


def _named(specs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    named: dict[str, dict[str, Any]] = {}
    for index, spec in enumerate(specs):
        base = _identifier(str(spec.get("name") or spec.get("type") or f"grader_{index}"))
        key, n = base, 2
        while key in named:
            key, n = f"{base}_{n}", n + 1
        named[key] = {**spec, "name": key}
    return named


def _identifier(text: str) -> str:
    word = re.sub(r"\W+", "_", text).strip("_") or "grader"
    return f"g_{word}" if word[0].isdigit() else word
