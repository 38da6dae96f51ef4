"""Stored completions as eval cases: distil from production traffic, as OpenAI's guide does.

A suite with ``source: {stored_completions: {role, model, metadata, limit}}`` lists the
completions stored (``store: true``) on that role's endpoint, filtered by model and metadata;
each becomes a case whose messages are the stored request and whose reference is the stored
reply. No pytest import; the plugin passes the SDK client in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_distill.evals.cases import EvalCase

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
        reply = stored.choices[0].message.content if stored.choices else None
        if not reply:
            continue
        messages = [
            {"role": m.role, "content": m.content}
            for m in client.chat.completions.messages.list(stored.id, order="asc")
            if m.content
        ]
        cases.append(
            EvalCase(
                id=stored.id,
                line=line,
                reference=reply,
                messages=tuple(messages),
                graders=graders,
                metadata={"stored_completion": stored.id, **(stored.metadata or {})},
            )
        )
        if len(cases) >= source.limit:
            break  # here, not at the next turn: that would fetch the next page first
    return cases
