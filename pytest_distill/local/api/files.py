"""The Files API: uploads kept on disk, their descriptions in the store."""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from pytest_distill.local.errors import bad_request, not_found
from pytest_distill.local.private import private_dir
from pytest_distill.local.store import Record, Store, paginate

PARTIAL = ".partial-"
"""Infix of an upload being written; what a killed process left is removed at start-up."""
PURPOSES = frozenset({"fine-tune", "batch", "assistants", "vision", "user_data"})


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


class Files:
    """Uploaded files under ``<root>/<file id>``."""

    def __init__(self, store: Store, root: Path) -> None:
        self._store = store
        self._root = root
        private_dir(root)

    def create(self, filename: str, purpose: str, data: IO[bytes]) -> dict[str, Any]:
        """An upload: checked, then streamed to disk (a temporary name, renamed when whole)."""
        if purpose not in PURPOSES:
            allowed = ", ".join(sorted(PURPOSES))
            raise bad_request(f"Invalid purpose {purpose!r}; allowed: {allowed}.", "purpose")
        return self._put(filename, purpose, lambda out: shutil.copyfileobj(data, out, 1 << 20))

    def add(self, filename: str, purpose: str, data: bytes) -> dict[str, Any]:
        """Store a file without checking ``purpose`` (the server's own result files)."""
        return self._put(filename, purpose, lambda out: out.write(data))

    def _put(
        self, filename: str, purpose: str, write: Callable[[IO[bytes]], object]
    ) -> dict[str, Any]:
        file_id = new_id("file-")
        target = self._root / file_id
        partial = target.with_name(f"{file_id}{PARTIAL}{os.getpid()}")
        try:
            with open(os.open(partial, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600), "wb") as out:
                os.fchmod(out.fileno(), 0o600)  # whatever the umask
                write(out)
            size = partial.stat().st_size
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        body = {
            "id": file_id,
            "object": "file",
            "bytes": size,
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        self._store.put(Record("file", file_id, body, {}))
        return body

    def retrieve(self, file_id: str) -> dict[str, Any]:
        record = self._store.get("file", file_id)
        if record is None:
            raise not_found("file", file_id, "file_id")
        return record.body

    def content(self, file_id: str) -> bytes:
        return self.path(file_id).read_bytes()

    def path(self, file_id: str) -> Path:
        """Where an uploaded file's bytes are (404 for an unknown id)."""
        self.retrieve(file_id)
        return self._root / file_id

    def list(
        self, purpose: str | None, after: str | None, limit: int, order: str
    ) -> dict[str, Any]:
        bodies = [r.body for r in self._store.list("file")]
        if purpose:
            bodies = [b for b in bodies if b["purpose"] == purpose]
        return paginate(bodies, after=after, limit=limit, newest_first=order != "asc").body()

    def delete(self, file_id: str) -> dict[str, Any]:
        self.retrieve(file_id)
        self._store.delete("file", file_id)
        (self._root / file_id).unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}
