"""Dynamic batching: concurrent chat requests for one model are decoded together.

Each base model gets one worker thread. A request waits in a queue; the worker takes the oldest
request, gathers every other request waiting for the same model id (the same adapter), up to
``max_batch``, and decodes them as one left-padded batch. The worker also owns the engine, so
adapters are switched without locks.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_distill.local.engine.decode import Engine, GenRequest, GenResult


@dataclass(frozen=True, slots=True)
class _Pending:
    adapter: Path | None
    request: GenRequest
    future: Future[GenResult]


class Batcher:
    """Queues requests for one base model and serves them in batches on a worker thread."""

    def __init__(
        self, load: Callable[[], Engine], *, max_batch: int = 64, window_s: float = 0.005
    ) -> None:
        self._load = load
        self._engine: Engine | None = None
        self._max_batch = max_batch
        self._window_s = window_s
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._waiting: list[_Pending] = []
        self._thread = threading.Thread(target=self._run, name="distill-batcher", daemon=True)
        self._thread.start()

    def submit(self, adapter: Path | None, request: GenRequest) -> Future[GenResult]:
        future: Future[GenResult] = Future()
        self._queue.put(_Pending(adapter, request, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            if not self._waiting and not self._gather(block=True):
                return
            # A short window lets requests sent "at once" by a client arrive before decoding.
            time.sleep(self._window_s)
            if not self._gather(block=False):
                return
            self._serve(self._next_batch())

    def _gather(self, *, block: bool) -> bool:
        """Move queued requests to ``_waiting``; False once ``close`` was called."""
        try:
            item = self._queue.get(block=block)
            while True:
                if item is None:
                    self._fail_waiting()
                    return False
                self._waiting.append(item)
                item = self._queue.get_nowait()
        except queue.Empty:
            return True

    def _next_batch(self) -> list[_Pending]:
        adapter = self._waiting[0].adapter
        batch = [p for p in self._waiting if p.adapter == adapter][: self._max_batch]
        self._waiting = [p for p in self._waiting if p not in batch]
        return batch

    def _serve(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if p.future.set_running_or_notify_cancel()]
        try:
            if self._engine is None:
                self._engine = self._load()
            results = self._engine.generate(batch[0].adapter, [p.request for p in live])
        except Exception as exc:  # handed to every waiting HTTP thread, which answers it
            for pending in live:
                pending.future.set_exception(exc)
            return
        for pending, result in zip(live, results, strict=True):
            if isinstance(result, Exception):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)

    def _fail_waiting(self) -> None:
        for pending in self._waiting:
            pending.future.cancel()
        self._waiting = []
