"""The chat fine-tuning file: OpenAI's validation rules, and the examples they let through.

A line is OpenAI's supervised chat example: ``messages`` (system, developer, user, assistant,
tool), optionally ``tools`` (function definitions) and ``parallel_tool_calls``. The rules, each
reported with the line that breaks it:

- every message has a known role and non-empty ``content``, except an assistant message that
  makes ``tool_calls`` (its content may then be null or absent);
- ``weight`` (0 or 1) marks whether an assistant message is trained (default 1);
- a tool call's name is among the line's ``tools`` and its ``arguments`` are a JSON string;
  call ids are unique within the line (the shapes are ``distill_shapes.tools``);
- each ``tool`` message answers, by ``tool_call_id``, a call of the assistant message before
  it, and every call is answered before the conversation goes on (only the last message may
  leave its calls unanswered: it is the answer being taught);
- at least one assistant message is trained (weight 1).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

from distill_shapes.tools import FunctionTool, InvalidShape, ToolCall, parse_tool_calls, parse_tools

MIN_EXAMPLES = 10
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class InvalidTrainingFile(ValueError):
    """A rule broken by the file, with the 1-based line that broke it (None: whole file)."""

    def __init__(self, line: int | None, rule: str) -> None:
        where = "" if line is None else f"line {line}: "
        super().__init__(f"Invalid training file: {where}{rule}")
        self.line = line
        self.rule = rule


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str
    trained: bool
    """True for assistant messages whose tokens carry loss (OpenAI's ``weight``, default 1)."""
    tool_calls: tuple[ToolCall, ...] = ()
    """An assistant message's calls (its ``content`` is then often empty)."""
    tool_call_id: str | None = None
    """The call a ``tool`` message answers."""


@dataclass(frozen=True, slots=True)
class Example:
    messages: tuple[Message, ...]
    line: int | None = None
    """The 1-based line of the file it came from, for errors found later (its length)."""
    tools: tuple[FunctionTool, ...] = ()
    """The functions the conversation may call, as the model sees them."""
    parallel_tool_calls: bool | None = None
    """OpenAI's ``parallel_tool_calls`` (None: not given; OpenAI's default is true)."""


def parse_training_file(data: bytes) -> list[Example]:
    """Every example of a chat fine-tune JSONL, or ``InvalidTrainingFile`` at the first fault."""
    return parse_training_lines(data.split(b"\n"))


def parse_training_lines(lines: Iterable[bytes | str]) -> list[Example]:
    """``parse_training_file`` over the file's lines (e.g. ``read_lines`` of an open file), so
    that the file need not be in memory whole."""
    examples = list(iter_examples(lines))
    enough(len(examples))
    return examples


def iter_examples(lines: Iterable[bytes | str]) -> Iterator[Example]:
    """The examples of the lines, checked one at a time; blank lines are skipped. The caller
    checks the count with ``enough``."""
    for number, raw in enumerate(lines, 1):
        line = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        if line.strip():
            yield _example(number, line)


def enough(count: int) -> None:
    """The error for a file of fewer than ``MIN_EXAMPLES`` examples."""
    if count < MIN_EXAMPLES:
        raise InvalidTrainingFile(
            None,
            f"it has {count} examples; at least {MIN_EXAMPLES} are required.",
        )


def read_lines(stream: IO[bytes], max_line_bytes: int) -> Iterator[bytes]:
    """The lines of a binary file, never more than ``max_line_bytes`` of one in memory: a longer
    line is refused naming it and the limit, before the rest of it is read."""
    number = 0
    while chunk := stream.readline(max_line_bytes + 2):  # the line, its "\r\n", one more
        number += 1
        if len(chunk.rstrip(b"\r\n")) > max_line_bytes:
            raise InvalidTrainingFile(
                number,
                f"the line is longer than {max_line_bytes} bytes, the most a line may have "
                "here (an example must fit the model's context).",
            )
        yield chunk


def too_long(example: Example, tokens: int, limit: int) -> InvalidTrainingFile:
    """The error for an example longer than the model's context, which training cannot cut
    without losing the end of its answer."""
    return InvalidTrainingFile(
        example.line,
        f"the example has {tokens} tokens; the model takes at most {limit} (its context). "
        "Shorten the example or split its conversation.",
    )


def _example(number: int, line: str) -> Example:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidTrainingFile(number, f"not valid JSON ({exc.msg}).") from None
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
        raise InvalidTrainingFile(number, "`messages` must be a non-empty list of messages.")
    parsed, tools, parallel = parse_conversation(number, record)
    if not any(message.role == "assistant" for message in parsed):
        raise InvalidTrainingFile(number, "each example needs at least one assistant message.")
    answers(number, parsed)
    if not any(message.trained for message in parsed):
        raise InvalidTrainingFile(
            number,
            "every assistant message has weight 0, so the example teaches nothing; give the "
            "answer it teaches weight 1.",
        )
    return Example(parsed, number, tools, parallel)


def parse_conversation(
    number: int, record: Mapping[str, Any], prefix: str = ""
) -> tuple[tuple[Message, ...], tuple[FunctionTool, ...], bool | None]:
    """The ``messages`` (a non-empty list: the caller checks it), ``tools`` and
    ``parallel_tool_calls`` of ``record``, a conversation on line ``number``, by the rules
    above; ``prefix`` names where it sits in the line (``input.`` in a preference line). The
    preference and reinforcement files read their prompts with it too."""
    try:
        found = record.get("tools")
        tools = parse_tools(found, f"{prefix}tools") if found is not None else ()
    except InvalidShape as error:
        raise InvalidTrainingFile(number, f"{error}.") from None
    parallel = record.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise InvalidTrainingFile(
            number, f"`{prefix}parallel_tool_calls` is {parallel!r}; it must be true or false."
        )
    parsed = tuple(
        parse_message(number, f"{prefix}messages[{index}]", item, tools)
        for index, item in enumerate(record["messages"])
    )
    return parsed, tools, parallel


def parse_message(number: int, where: str, item: Any, tools: tuple[FunctionTool, ...]) -> Message:
    """One message of line ``number``, at ``where`` (e.g. ``messages[2]``), by the rules above;
    the preference and reinforcement files read their messages with it too."""
    if not isinstance(item, dict):
        raise InvalidTrainingFile(number, f"{where} must be an object with `role` and `content`.")
    role = item.get("role")
    if role not in ROLES:
        allowed = ", ".join(sorted(ROLES))
        raise InvalidTrainingFile(number, f"{where} has role {role!r}; known roles: {allowed}.")
    calls: tuple[ToolCall, ...] = ()
    if item.get("tool_calls") is not None:
        if role != "assistant":
            raise InvalidTrainingFile(
                number, f"{where} ({role}) has `tool_calls`; only assistant messages call tools."
            )
        try:
            calls = parse_tool_calls(item["tool_calls"], f"{where}.tool_calls", tools=tools)
        except InvalidShape as error:
            raise InvalidTrainingFile(number, f"{error}.") from None
    content = message_text(item.get("content"))
    if not content.strip() and not calls:
        raise InvalidTrainingFile(number, f"{where} ({role}) has empty or missing `content`.")
    call_id = item.get("tool_call_id")
    if role == "tool" and (not isinstance(call_id, str) or not call_id):
        raise InvalidTrainingFile(
            number,
            f"{where} (tool) has `tool_call_id` {call_id!r}; a tool message names the call it "
            "answers by its id.",
        )
    weight = item.get("weight", 1)
    if weight not in (0, 1):
        raise InvalidTrainingFile(number, f"{where} has weight {weight!r}; it must be 0 or 1.")
    return Message(
        role,
        content,
        role == "assistant" and weight == 1,
        calls,
        call_id if role == "tool" else None,
    )


def answers(number: int, messages: tuple[Message, ...], prefix: str = "messages") -> None:
    """Each tool message answers a call of the assistant message before it; each call is
    answered before the conversation goes on, except those of the last message. ``prefix``
    names the list in errors."""
    pending: dict[str, int] = {}  # call id -> index of the assistant message that made it
    for index, message in enumerate(messages):
        if message.role == "tool":
            if message.tool_call_id not in pending:
                raise InvalidTrainingFile(
                    number,
                    f"{prefix}[{index}] (tool) answers tool_call_id {message.tool_call_id!r}, "
                    "which no assistant message before it called (or it is answered twice); "
                    "use the id of one of that message's `tool_calls`.",
                )
            del pending[message.tool_call_id]
            continue
        if pending:
            call_id, caller = next(iter(pending.items()))
            raise InvalidTrainingFile(
                number,
                f"{prefix}[{caller}] calls {call_id!r}, but no tool message answers it before "
                f"{prefix}[{index}]; add a tool message with that `tool_call_id`.",
            )
        pending = {call.id: index for call in message.tool_calls}


def message_text(content: Any) -> str:
    """Content as text: a string, or the text parts of a content-parts list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict)]
        return "".join(p for p in parts if isinstance(p, str))
    return ""
