"""The Files API: uploads kept on disk, their descriptions in the store."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from distill_server.errors import ApiError, bad_request, not_found
from distill_server.private import private_dir
from distill_server.store import Record, Store, new_id, paginate

PARTIAL = ".partial-"
"""Infix of an upload being written; what a killed process left is removed at start-up."""
_JOBS_USING = (
    "SELECT id, json_extract(body, '$.status') FROM objects WHERE kind = 'job' AND "
    "json_extract(body, '$.status') NOT IN ('succeeded', 'failed', 'cancelled') AND "
    "(json_extract(body, '$.training_file') = ? OR json_extract(body, '$.validation_file') = ?)"
)
_BATCHES_USING = (
    "SELECT id, json_extract(body, '$.status') FROM objects WHERE kind = 'batch' AND "
    "json_extract(body, '$.status') IN ('validating', 'in_progress', 'finalizing', 'cancelling') "
    "AND json_extract(body, '$.input_file_id') = ?"
)
PURPOSES = frozenset({"fine-tune", "batch", "assistants", "vision", "user_data"})
"""What an upload may be for; a batch's input file is uploaded with ``batch`` (its lines are
checked when a batch runs it), and the server's results get ``batch_output`` and
``fine-tune-results``."""


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

    def add_copy(self, filename: str, purpose: str, source: Path) -> dict[str, Any]:
        """Store a copy of the file at ``source`` (a batch's results, written as it ran)."""

        def copy(out: IO[bytes]) -> None:
            with source.open("rb") as data:
                shutil.copyfileobj(data, out, 1 << 20)

        return self._put(filename, purpose, copy)

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

    def head(self, file_id: str, lines: int, max_bytes: int = 64 << 10) -> list[str]:
        """The file's first ``lines`` lines, from at most its first ``max_bytes`` (a line cut
        there ends the list): a page showing a file never reads it whole."""
        with self.path(file_id).open("rb") as stream:
            data = stream.read(max_bytes)
        return data.decode("utf-8", errors="replace").splitlines()[:lines]

    def count_lines(self, file_id: str) -> int:
        """The file's lines (as ``splitlines`` counts them), counted in 1 MB blocks."""
        count, last = 0, b"\n"
        with self.path(file_id).open("rb") as stream:
            while block := stream.read(1 << 20):
                count += block.count(b"\n")
                last = block[-1:]
        return count + (last != b"\n")

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
        """Delete a file, unless a job that has not finished trains on it, or a batch that has
        not finished reads it (409): deleting it would fail them later, far from the request
        that caused it."""
        self.retrieve(file_id)
        using = self._store.query(_JOBS_USING, (file_id, file_id))
        if using:
            raise ApiError(
                409,
                f"File {file_id!r} is used by fine-tuning job {using[0][0]!r}, which is "
                f"{using[0][1]}; cancel it or wait for it to finish, then delete the file.",
                param="file_id",
                code="file_in_use",
            )
        running = self._store.query(_BATCHES_USING, (file_id,))
        if running:
            raise ApiError(
                409,
                f"File {file_id!r} is the input of batch {running[0][0]!r}, which is "
                f"{running[0][1]}; cancel it or wait for it to finish, then delete the file.",
                param="file_id",
                code="file_in_use",
            )
        self._store.delete("file", file_id)
        (self._root / file_id).unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}
