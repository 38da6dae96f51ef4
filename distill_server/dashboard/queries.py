"""The dashboard's reads of stored completions, filtered and paged in SQL.

A page is the newest ``limit`` matches before a cursor (the row's insertion sequence), so the
first page of 100,000 stored completions reads 50 rows through the ``(kind, seq)`` index, and a
model filter uses the ``(kind, model, seq)`` index. Metadata and text filters are evaluated by
SQLite row by row, newest first, until the page is full; a metadata filter reads the ``tags``
table the store keeps (an index of every stored completion's metadata).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import Any

from distill_server.store import Store

PAGE_SIZE = 50
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_MODEL = "json_extract(body, '$.model')"


@dataclass(frozen=True, slots=True)
class CompletionFilter:
    """What the stored-completions page shows: every field empty means everything."""

    model: str = ""
    key: str = ""  # a metadata key ...
    value: str = ""  # ... and the value it must have
    since: str = ""  # ISO dates, inclusive
    until: str = ""
    text: str = ""  # found in the prompt or the reply

    @classmethod
    def from_query(cls, query: Any) -> CompletionFilter:
        return cls(**{name: str(query.get(name, "")).strip() for name in cls.__slots__})

    def params(self) -> dict[str, str]:
        """The non-empty fields, for links and hidden form fields."""
        return {name: getattr(self, name) for name in self.__slots__ if getattr(self, name)}

    def select(self, columns: str, before: int | None) -> tuple[str, list[Any]]:
        """``SELECT columns ... ORDER BY seq DESC`` over the matches older than ``before``.

        With a metadata filter the ``tags`` index drives the query, newest first; else the
        ``(kind, parent, seq)`` index does ("parent IS NULL": completions have none). Either
        way SQLite stops once the page is full instead of sorting every match.
        """
        args: list[Any] = []
        if self.key:
            source, seq = "tags t JOIN objects o ON o.seq = t.seq", "t.seq"
            clauses = ["t.key = ?", "t.value = ?", "o.kind = 'completion'"]
            args += [self.key, self.value]
        else:
            source, seq = "objects o", "o.seq"
            clauses = ["o.kind = 'completion'", "o.parent IS NULL"]
        if self.model:
            clauses.append("json_extract(o.body, '$.model') = ?")
            args.append(self.model)
        for name, bound, op, days in (
            ("since", self.since, ">=", 0),
            ("until", self.until, "<", 1),
        ):
            if bound:
                clauses.append(f"json_extract(o.body, '$.created') {op} ?")
                args.append(_epoch(name, bound, days))
        if self.text:
            pattern = "%" + self.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            # The decoded texts, not the stored JSON (which escapes quotes and non-ASCII).
            clauses.append(
                "(json_extract(o.body, '$.choices[0].message.content') LIKE ? ESCAPE '\\' "
                "OR EXISTS (SELECT 1 FROM json_each(o.extra, '$.messages') m "
                "WHERE json_extract(m.value, '$.content') LIKE ? ESCAPE '\\'))"
            )
            args += [pattern + "%", pattern + "%"]
        if before is not None:
            clauses.append(f"{seq} < ?")
            args.append(before)
        where = " AND ".join(clauses)
        return f"SELECT {columns} FROM {source} WHERE {where} ORDER BY {seq} DESC", args


@dataclass(frozen=True, slots=True)
class Row:
    seq: int
    id: str
    model: str
    created: int
    metadata: dict[str, str]
    prompt: str
    reply: str


def page(store: Store, where: CompletionFilter, before: int | None) -> tuple[list[Row], int | None]:
    """The newest ``PAGE_SIZE`` matches older than ``before``, and the cursor of the next page."""
    sql, args = where.select("o.seq, o.body, o.extra", before)
    rows = store.query(f"{sql} LIMIT ?", [*args, PAGE_SIZE + 1])
    found = [_row(*row) for row in rows[:PAGE_SIZE]]
    return found, (found[-1].seq if len(rows) > PAGE_SIZE else None)


def matching_ids(store: Store, where: CompletionFilter, limit: int) -> list[str]:
    """The newest ``limit`` matches' ids, oldest first: "select all that the filter shows"."""
    sql, args = where.select("o.id", None)
    rows = store.query(f"{sql} LIMIT ?", [*args, limit])
    return [row[0] for row in reversed(rows)]


def models(store: Store) -> list[str]:
    rows = store.query(
        f"SELECT DISTINCT {_MODEL} FROM objects WHERE kind = 'completion' ORDER BY 1"
    )
    return [row[0] for row in rows if row[0]]


def _row(seq: int, body: str, extra: str) -> Row:
    data, notes = json.loads(body), json.loads(extra)
    messages = notes.get("messages") or []
    user = [m.get("content", "") for m in messages if m.get("role") == "user"]
    choices = data.get("choices") or [{}]
    return Row(
        seq=seq,
        id=data["id"],
        model=data.get("model", ""),
        created=int(data.get("created", 0)),
        metadata=data.get("metadata") or {},
        prompt=str(user[-1] if user else ""),
        reply=str((choices[0].get("message") or {}).get("content") or ""),
    )


def _epoch(name: str, day: str, plus_days: int) -> int:
    """The first second (UTC) of ``day`` plus ``plus_days``; a ValueError naming the field
    for anything but an ASCII ``YYYY-MM-DD`` from year 1 to 9999 (the last day excluded when a
    day is added: its end is past what ``datetime`` can count)."""
    shown = day if len(day) <= 40 else day[:40] + "..."
    problem = f"`{name}`: {shown!r} is not a date; write it as YYYY-MM-DD"
    if not _DATE.fullmatch(day):
        raise ValueError(problem)
    try:
        date = dt.date.fromisoformat(day) + dt.timedelta(days=plus_days)
    except ValueError:
        raise ValueError(problem) from None
    except OverflowError:
        raise ValueError(f"`{name}`: {shown!r} is too late; use a date before 9999-12-31") from None
    return int(dt.datetime.combine(date, dt.time(), dt.UTC).timestamp())
