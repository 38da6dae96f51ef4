"""Durable state: every API object is a row in one SQLite table, listed in creation order.

A single table keyed by object id keeps restarts trivial: whatever was written is listed again.
Each row holds the public JSON body and a private ``extra`` dict (file paths, request messages)
that never leaves the server.
"""

from __future__ import annotations

import builtins
import json
import secrets
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill_server.private import private_file

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    id TEXT NOT NULL UNIQUE,
    parent TEXT,
    body TEXT NOT NULL,
    extra TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS objects_kind ON objects (kind, parent, seq);
CREATE INDEX IF NOT EXISTS objects_model ON objects (kind, json_extract(body, '$.model'), seq);
"""

# Stored completions' metadata as rows, kept by triggers, so that filtering 100,000 completions
# by a metadata value reads an index instead of parsing every body. Built once for rows stored
# before the table existed.
_TAGS = """
CREATE TABLE IF NOT EXISTS tags (
    key TEXT NOT NULL, value TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (key, value, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tags_seq ON tags (seq);
CREATE TRIGGER IF NOT EXISTS tags_insert AFTER INSERT ON objects WHEN new.kind = 'completion'
BEGIN
    INSERT OR IGNORE INTO tags SELECT key, value, new.seq FROM json_each(new.body, '$.metadata')
    WHERE type = 'text';
END;
CREATE TRIGGER IF NOT EXISTS tags_update AFTER UPDATE OF body ON objects
WHEN new.kind = 'completion'
BEGIN
    DELETE FROM tags WHERE seq = old.seq;
    INSERT OR IGNORE INTO tags SELECT key, value, new.seq FROM json_each(new.body, '$.metadata')
    WHERE type = 'text';
END;
CREATE TRIGGER IF NOT EXISTS tags_delete AFTER DELETE ON objects WHEN old.kind = 'completion'
BEGIN
    DELETE FROM tags WHERE seq = old.seq;
END;
"""
_TAGS_BACKFILL = """
INSERT OR IGNORE INTO tags SELECT j.key, j.value, o.seq FROM objects o,
    json_each(o.body, '$.metadata') j WHERE o.kind = 'completion' AND j.type = 'text'
"""


@dataclass(frozen=True, slots=True)
class Record:
    """One stored object: its public body and the server's private notes about it."""

    kind: str
    id: str
    body: dict[str, Any]
    extra: dict[str, Any]


class Store:
    """Thread-safe access to ``<data_dir>/state.sqlite3``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        private_file(path)  # SQLite gives its -wal and -shm files the database's mode
        # One connection behind a lock: the HTTP threads, batcher and trainer all write, and
        # SQLite serialises writers anyway; autocommit makes every put durable at once.
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(_SCHEMA)
        fresh = not self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tags'"
        ).fetchone()
        self._conn.executescript(_TAGS)
        if fresh:
            self._conn.execute(_TAGS_BACKFILL)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def put(self, record: Record, parent: str | None = None) -> None:
        """Insert or replace ``record``, keeping its original position in listings."""
        sql = (
            "INSERT INTO objects (kind, id, parent, body, extra) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET body = excluded.body, extra = excluded.extra"
        )
        args = (record.kind, record.id, parent, json.dumps(record.body), json.dumps(record.extra))
        with self._lock:
            self._conn.execute(sql, args)

    def get(self, kind: str, object_id: str) -> Record | None:
        sql = "SELECT kind, id, body, extra FROM objects WHERE kind = ? AND id = ?"
        with self._lock:
            row = self._conn.execute(sql, (kind, object_id)).fetchone()
        return None if row is None else _record(row)

    def list(self, kind: str, parent: str | None = None) -> list[Record]:
        """All objects of ``kind`` (under ``parent`` when given), oldest first."""
        sql = "SELECT kind, id, body, extra FROM objects WHERE kind = ?"
        args: tuple[str, ...] = (kind,)
        if parent is not None:
            sql, args = sql + " AND parent = ?", (kind, parent)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY seq", args).fetchall()
        return [_record(row) for row in rows]

    def query(self, sql: str, args: Iterable[Any] = ()) -> builtins.list[tuple[Any, ...]]:
        """Rows of a read-only ``SELECT`` over ``objects``, for views that filter in SQL."""
        with self._lock:
            return list(self._conn.execute(sql, tuple(args)).fetchall())

    def delete(self, kind: str, object_id: str) -> bool:
        with self._lock:
            cursor = self._conn.execute(
                "DELETE FROM objects WHERE kind = ? AND id = ?", (kind, object_id)
            )
        return cursor.rowcount > 0


def _record(row: Iterable[Any]) -> Record:
    kind, object_id, body, extra = row
    return Record(kind, object_id, json.loads(body), json.loads(extra))


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list endpoint."""

    data: list[dict[str, Any]]
    has_more: bool

    def body(self, *, cursors: bool = True) -> dict[str, Any]:
        """The ``{"object": "list", ...}`` body; ``cursors`` adds first_id/last_id."""
        out: dict[str, Any] = {"object": "list", "data": self.data, "has_more": self.has_more}
        if cursors:
            out["first_id"] = self.data[0]["id"] if self.data else ""
            out["last_id"] = self.data[-1]["id"] if self.data else ""
        return out


def paginate(
    bodies: list[dict[str, Any]], *, after: str | None, limit: int, newest_first: bool
) -> Page:
    """Cursor pagination as OpenAI does it: items strictly after the ``after`` id."""
    items = list(reversed(bodies)) if newest_first else list(bodies)
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    return Page(items[:limit], len(items) > limit)


def new_id(prefix: str) -> str:
    """A fresh object id: ``prefix`` and 24 random hex digits."""
    return f"{prefix}{secrets.token_hex(12)}"


def matches(metadata: Mapping[str, str] | None, wanted: Mapping[str, str]) -> bool:
    """Every ``wanted`` key is in ``metadata`` with that value (a list's metadata filter)."""
    return all((metadata or {}).get(key) == value for key, value in wanted.items())
