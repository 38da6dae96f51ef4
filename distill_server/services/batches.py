"""The Batch API: batches' records and their state machine (``batch_runner`` runs them).

A batch moves ``validating -> in_progress -> finalizing -> completed``; a bad input file
fails it (``failed``, ``errors`` naming the line); a cancel moves it to ``cancelling``, then
``cancelled`` once what ran is written out. Every move goes through ``Batches.update`` under
one lock and stamps its ``<status>_at``; a final state is never left, ``cancelling`` only
goes on to ``cancelled``, and a cancel that comes once the batch is ``finalizing`` is too late.
State lives in the store, so a server started again on the same data directory carries on
with what the last one left (``batch_runner`` says how).
"""

from __future__ import annotations

import builtins
import threading
import time
from pathlib import Path
from typing import Any

from distill_server.errors import ApiError, bad_request, not_found
from distill_server.private import private_dir
from distill_server.services.files import Files
from distill_server.services.schemas import BatchCreate
from distill_server.store import Record, Store, new_id, paginate
from distill_shapes.batch import COMPLETION_WINDOW, SERVED_URLS

FINAL = frozenset({"completed", "failed", "cancelled", "expired"})
RUNNABLE = ("validating", "in_progress", "finalizing")
"""The states the runner takes a batch up in (oldest first)."""
_STAMPED = frozenset(
    {"in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled"}
)
WINDOW_S = 24 * 60 * 60
"""``completion_window`` (24h): when ``expires_at`` falls (a local batch is never expired)."""


class Batches:
    """Batch records; a batch's results are written under ``<root>/<batch id>/`` as it runs."""

    def __init__(self, store: Store, files: Files, root: Path) -> None:
        self.store = store
        self.files = files
        self.root = private_dir(root)
        self._lock = threading.Lock()
        self.waiting = threading.Condition()
        """Notified when a batch is created or cancelled: the runner has work."""
        self._active: str | None = None

    def create(self, request: BatchCreate) -> dict[str, Any]:
        """A batch of ``input_file_id``'s requests, ``validating`` on return."""
        if request.endpoint not in SERVED_URLS:
            served = ", ".join(sorted(SERVED_URLS))
            raise bad_request(
                f"`endpoint` {request.endpoint!r} is not batched by this server; use {served}.",
                "endpoint",
                "invalid_value",
            )
        if request.completion_window != COMPLETION_WINDOW:
            raise bad_request(
                f"`completion_window` must be {COMPLETION_WINDOW!r}, not "
                f"{request.completion_window!r}.",
                "completion_window",
                "invalid_value",
            )
        try:
            purpose = self.files.retrieve(request.input_file_id)["purpose"]
        except ApiError:
            message = f"File {request.input_file_id!r} does not exist."
            raise bad_request(message, "input_file_id", "invalid_file") from None
        if purpose != "batch":
            raise bad_request(
                f"File {request.input_file_id!r} has purpose {purpose!r}; upload the batch's "
                "input file with purpose 'batch'.",
                "input_file_id",
                "invalid_file_purpose",
            )
        now = int(time.time())
        body: dict[str, Any] = {
            "id": new_id("batch_"),
            "object": "batch",
            "endpoint": request.endpoint,
            "errors": None,
            "input_file_id": request.input_file_id,
            "completion_window": request.completion_window,
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + WINDOW_S,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": dict(request.metadata) if request.metadata is not None else None,
        }
        self.store.put(Record("batch", body["id"], body, {}))
        with self.waiting:
            self.waiting.notify_all()
        return shown(body)

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        return shown(self.body(batch_id))

    def body(self, batch_id: str) -> dict[str, Any]:
        """The stored body, unset fields as None (``retrieve`` leaves them out)."""
        record = self.store.get("batch", batch_id)
        if record is None:
            raise not_found("batch", batch_id, "batch_id")
        return record.body

    def list(self, after: str | None, limit: int) -> dict[str, Any]:
        bodies = [shown(r.body) for r in self.store.list("batch")]
        return paginate(bodies, after=after, limit=limit, newest_first=True).body()

    def cancel(self, batch_id: str) -> dict[str, Any]:
        """Ask for a batch to stop: ``cancelling`` on return; the runner writes out what ran
        (requests that did not run get ``batch_cancelled`` lines) and marks it cancelled."""
        status = self.body(batch_id)["status"]
        if status in FINAL:
            raise bad_request(
                f"Batch {batch_id!r} is already {status} and cannot be cancelled.",
                "batch_id",
                "batch_not_cancellable",
            )
        body = self.update(batch_id, "cancelling")
        with self.waiting:
            self.waiting.notify_all()
        return shown(body)

    def update(self, batch_id: str, status: str | None = None, **changes: Any) -> dict[str, Any]:
        """Apply ``changes`` and move to ``status`` (stamping ``<status>_at``), unless the
        batch is final; a cancelling batch takes no status but ``cancelled`` (or ``failed``),
        a finalizing one none but ``completed`` (or ``failed``). Returns the stored body."""
        with self._lock:
            record = self.store.get("batch", batch_id)
            if record is None:
                raise not_found("batch", batch_id, "batch_id")
            current = record.body["status"]
            if current in FINAL:
                return record.body
            body = {**record.body, **changes}
            moves = status is not None and status != current
            if moves and current == "cancelling" and status not in ("cancelled", "failed"):
                moves = False
            if moves and current == "finalizing" and status not in ("completed", "failed"):
                moves = False  # every request has its line: a cancel comes too late
            if moves:
                body["status"] = status
                if status in _STAMPED:
                    body[f"{status}_at"] = int(time.time())
            self.store.put(Record("batch", batch_id, body, record.extra))
            return body

    def claim(self) -> dict[str, Any] | None:
        """The next batch for the runner (a cancelling one first, then the oldest runnable),
        marked as the one running; ``release`` when done."""
        with self._lock:
            bodies = [r.body for r in self.store.list("batch")]
            cancelling = [b for b in bodies if b["status"] == "cancelling"]
            runnable = [b for b in bodies if b["status"] in RUNNABLE]
            chosen = next(iter(cancelling or runnable), None)
            self._active = chosen["id"] if chosen else None
            return chosen

    def release(self) -> None:
        with self._lock:
            self._active = None

    def cancelling_idle(self) -> builtins.list[str]:
        """Cancelling batches that the runner is not running (to be written out now)."""
        with self._lock:
            return [
                r.id
                for r in self.store.list("batch")
                if r.body["status"] == "cancelling" and r.id != self._active
            ]

    def workdir(self, batch_id: str) -> Path:
        """Where a running batch's results are appended (``output.jsonl``, ``errors.jsonl``)."""
        return private_dir(self.root / batch_id)


def shown(body: dict[str, Any]) -> dict[str, Any]:
    """The ``Batch`` object as answered: fields not set yet are left out (the API's schema
    types them as strings and integers, not null), ``metadata`` always present."""
    return {k: v for k, v in body.items() if v is not None or k == "metadata"}
