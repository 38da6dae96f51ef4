"""The chat fine-tuning file: OpenAI's validation rules, and the examples they let through."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

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
    examples = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if line.strip():
            examples.append(_example(number, line))
    if len(examples) < MIN_EXAMPLES:
        raise InvalidTrainingFile(
            None,
            f"it has {len(examples)} examples; at least {MIN_EXAMPLES} are required.",
        )
    return examples


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
