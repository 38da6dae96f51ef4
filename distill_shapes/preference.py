"""The preference (DPO) fine-tuning file: OpenAI's lines, its rules, and the pairs they hold.

A line is one comparison under one prompt::

    {"input": {"messages": [...], "tools": [...], "parallel_tool_calls": true},
     "preferred_output": [{"role": "assistant", "content": "..."}],
     "non_preferred_output": [{"role": "assistant", "content": "..."}]}

The rules, each reported with the line that breaks it (``InvalidTrainingFile``, as for the chat
file in ``training``):

- ``input.messages`` follow the chat file's rules for messages (roles, content, tool calls
  among ``input.tools``, each call answered) and do not end with an assistant message: the
  answer is what the two outputs give;
- ``preferred_output`` and ``non_preferred_output`` each hold exactly one assistant message,
  with content or tool calls (calls among ``input.tools``);
- the two outputs differ (a pair of equal answers teaches nothing);
- the file has at least ``training.MIN_EXAMPLES`` lines.

``preference_line`` writes a line; ``iter_pairs`` and ``parse_preference_lines`` read them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from distill_shapes.tools import FunctionTool
from distill_shapes.training import (
    InvalidTrainingFile,
    Message,
    answers,
    enough,
    parse_conversation,
    parse_message,
)

KEYS = ("input", "preferred_output", "non_preferred_output")


@dataclass(frozen=True, slots=True)
class PreferencePair:
    """One line: the prompt, the answer preferred under it, and the one not preferred."""

    messages: tuple[Message, ...]
    chosen: Message
    rejected: Message
    line: int | None = None
    tools: tuple[FunctionTool, ...] = ()
    parallel_tool_calls: bool | None = None


def preference_line(
    messages: Sequence[Mapping[str, Any]],
    chosen: Mapping[str, Any],
    rejected: Mapping[str, Any],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    parallel_tool_calls: bool | None = None,
) -> dict[str, Any]:
    """One line of the file, as OpenAI reads it. ``chosen`` and ``rejected`` are assistant
    messages (``content`` and/or ``tool_calls``); ``tools`` and ``parallel_tool_calls`` go in
    ``input`` only when given."""
    prompt: dict[str, Any] = {"messages": [dict(message) for message in messages]}
    if tools:
        prompt["tools"] = [dict(tool) for tool in tools]
    if parallel_tool_calls is not None:
        prompt["parallel_tool_calls"] = parallel_tool_calls
    return {
        "input": prompt,
        "preferred_output": [_assistant(chosen)],
        "non_preferred_output": [_assistant(rejected)],
    }


def parse_preference_file(data: bytes) -> list[PreferencePair]:
    """Every pair of a DPO JSONL, or ``InvalidTrainingFile`` at the first fault."""
    return parse_preference_lines(data.split(b"\n"))


def parse_preference_lines(lines: Iterable[bytes | str]) -> list[PreferencePair]:
    """``parse_preference_file`` over the file's lines (e.g. ``training.read_lines``)."""
    pairs = list(iter_pairs(lines))
    enough(len(pairs))
    return pairs


def iter_pairs(lines: Iterable[bytes | str]) -> Iterator[PreferencePair]:
    """The pairs of the lines, checked one at a time; blank lines are skipped. The caller checks
    the count with ``training.enough``."""
    for number, raw in enumerate(lines, 1):
        line = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        if line.strip():
            yield _pair(number, line)


def _assistant(message: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "assistant"}
    out.update({key: value for key, value in message.items() if key != "role"})
    out.setdefault("content", None if out.get("tool_calls") else "")
    return out


def _pair(number: int, line: str) -> PreferencePair:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidTrainingFile(number, f"not valid JSON ({exc.msg}).") from None
    if not isinstance(record, dict) or not all(key in record for key in KEYS):
        fix = (
            "it looks like a supervised line (`messages`); send it with method type "
            "`supervised`, or write preference lines."
            if isinstance(record, dict) and "messages" in record
            else "each line needs them."
        )
        raise InvalidTrainingFile(
            number,
            f"a preference line has `input`, `preferred_output` and `non_preferred_output`; {fix}",
        )
    prompt = record["input"]
    if not isinstance(prompt, dict):
        raise InvalidTrainingFile(number, "`input` must be an object with `messages`.")
    messages = prompt.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidTrainingFile(number, "`input.messages` must be a non-empty list of messages.")
    parsed, tools, parallel = parse_conversation(number, prompt, "input.")
    if parsed[-1].role == "assistant":
        raise InvalidTrainingFile(
            number,
            "`input.messages` ends with an assistant message; the answer belongs in "
            "`preferred_output` and `non_preferred_output`.",
        )
    chosen = _output(number, "preferred_output", record["preferred_output"], tools)
    rejected = _output(number, "non_preferred_output", record["non_preferred_output"], tools)
    answers(number, (*parsed, chosen), prefix="input.messages")
    if (chosen.content, chosen.tool_calls) == (rejected.content, rejected.tool_calls):
        raise InvalidTrainingFile(
            number,
            "`preferred_output` and `non_preferred_output` are the same answer; a pair teaches "
            "only when they differ.",
        )
    return PreferencePair(parsed, chosen, rejected, number, tools, parallel)


def _output(number: int, key: str, value: Any, tools: tuple[FunctionTool, ...]) -> Message:
    if not isinstance(value, list) or len(value) != 1:
        raise InvalidTrainingFile(
            number, f"`{key}` must be a list of exactly one assistant message."
        )
    message = parse_message(number, f"{key}[0]", value[0], tools)
    if message.role != "assistant":
        raise InvalidTrainingFile(
            number, f"`{key}[0]` has role {message.role!r}; an output is an assistant message."
        )
    return message
