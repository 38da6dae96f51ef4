"""The chat fine-tuning file: OpenAI's validation rules, and the examples they let through."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

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


@dataclass(frozen=True, slots=True)
class Example:
    messages: tuple[Message, ...]
    line: int | None = None
    """The 1-based line of the file it came from, for errors found later (its length)."""


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
    parsed = tuple(_message(number, index, item) for index, item in enumerate(messages))
    if not any(message.role == "assistant" for message in parsed):
        raise InvalidTrainingFile(number, "each example needs at least one assistant message.")
    return Example(parsed, number)


def _message(number: int, index: int, item: Any) -> Message:
    where = f"messages[{index}]"
    if not isinstance(item, dict):
        raise InvalidTrainingFile(number, f"{where} must be an object with `role` and `content`.")
    role = item.get("role")
    if role not in ROLES:
        allowed = ", ".join(sorted(ROLES))
        raise InvalidTrainingFile(number, f"{where} has role {role!r}; known roles: {allowed}.")
    content = _text(item.get("content"))
    if not content.strip():
        raise InvalidTrainingFile(number, f"{where} ({role}) has empty or missing `content`.")
    weight = item.get("weight", 1)
    if weight not in (0, 1):
        raise InvalidTrainingFile(number, f"{where} has weight {weight!r}; it must be 0 or 1.")
    return Message(role, content, role == "assistant" and weight == 1)


def _text(content: Any) -> str:
    """Content as text: a string, or the text parts of a content-parts list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict)]
        return "".join(p for p in parts if isinstance(p, str))
    return ""
