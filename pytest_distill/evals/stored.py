"""Stored completions as eval cases: distil from production traffic, as OpenAI's guide does.

A suite with ``source: {stored_completions: {role, model, metadata, limit}}`` lists the
completions stored (``store: true``) on that role's endpoint, filtered by model and metadata;
each becomes a case whose messages are the stored request and whose reference is the stored
reply: its text, or its tool calls as expected calls (``[{name, arguments}]``, graded by
``tool_calls`` unless the suite names graders). The API does not return a stored request's
``tools``: such a suite gives them (``tools`` or ``tools_file``). No pytest import; the plugin
passes the SDK client in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_distill.evals.cases import DEFAULT_GRADERS, EvalCase
from pytest_distill.evals.loaders import TOOL_CALLS_GRADERS
from pytest_distill.roles import reply_tool_calls

if TYPE_CHECKING:
    import openai

_KEYS = {"role", "model", "metadata", "limit"}


@dataclass(frozen=True, slots=True)
class StoredSource:
    role: str = "teacher"
    model: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    limit: int = 100


def parse_source(raw: Any) -> StoredSource:
    """``raw`` is the mapping under ``stored_completions``; ValueError says what is wrong."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"'stored_completions' must be a mapping of {sorted(_KEYS)}, got {raw!r}")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ValueError(f"unknown stored_completions key {unknown[0]!r}; allowed: {sorted(_KEYS)}")
    metadata = raw.get("metadata") or {}
    if not isinstance(metadata, Mapping) or len(metadata) > 16:
        raise ValueError("stored_completions metadata must be a mapping of at most 16 pairs")
    limit = raw.get("limit", 100)
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"stored_completions limit must be a whole number >= 1, got {limit!r}")
    return StoredSource(
        role=str(raw.get("role", "teacher")),
        model=raw.get("model"),
        metadata={str(k): str(v) for k, v in metadata.items()},
        limit=limit,
    )


def load_cases(
    client: openai.OpenAI, source: StoredSource, graders: Any, line: int
) -> list[EvalCase]:
    """The stored completions matching ``source``, oldest first, as cases."""
    cases: list[EvalCase] = []
    filters: dict[str, Any] = {"metadata": dict(source.metadata)} if source.metadata else {}
    if source.model:
        filters["model"] = source.model
    pages = client.chat.completions.list(order="asc", limit=min(source.limit, 100), **filters)
    for stored in pages:
        message = stored.choices[0].message if stored.choices else None
        calls = reply_tool_calls(message)
        reply: Any = message.content if message is not None else None
        if calls:
            reply = [{"name": c.name, "arguments": _arguments(c.arguments)} for c in calls]
        if not reply:
            continue
        messages = [
            _message(m)
            for m in client.chat.completions.messages.list(stored.id, order="asc")
            if m.content or getattr(m, "tool_calls", None)
        ]
        cases.append(
            EvalCase(
                id=stored.id,
                line=line,
                reference=reply,
                messages=tuple(messages),
                graders=TOOL_CALLS_GRADERS if calls and graders is DEFAULT_GRADERS else graders,
                metadata={"stored_completion": stored.id, **(stored.metadata or {})},
            )
        )
        if len(cases) >= source.limit:
            break  # here, not at the next turn: that would fetch the next page first
    return cases


def _message(stored: Any) -> dict[str, Any]:
    """A stored request message in the request's shape: its tool calls and the call a tool
    message answers kept."""
    message: dict[str, Any] = {"role": stored.role, "content": stored.content}
    calls = reply_tool_calls(stored)
    if calls:
        message["tool_calls"] = [call.to_json() for call in calls]
    call_id = getattr(stored, "tool_call_id", None)
    if call_id:
        message["tool_call_id"] = call_id
    return message


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # the grader reports arguments that are not JSON
