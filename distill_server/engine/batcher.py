"""Continuous batching: concurrent chat requests for one model decode together, joining and
leaving the running batch between steps.

Each base model gets one worker thread, which owns the engine (so adapters are switched
without locks). The worker decodes one token for every running request per step; between
steps it takes the requests that arrived, runs their prompts and adds them to the running
batch of their model id (their adapter), up to ``max_batch`` rows. A short request that
arrives while a long one decodes so waits for a step, not for the long one.

``submit`` returns a ``Future``: cancelling it, queued or decoding, frees the request's row at
the next step.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distill_server.engine.decode import Decoding, Engine, GenRequest, GenResult, Row


@dataclass(frozen=True, slots=True)
class _Pending:
    adapter: Path | None
    request: GenRequest
    future: Future[GenResult]


class Batcher:
    """Queues requests for one base model and decodes them on a worker thread."""

    def __init__(
        self, load: Callable[[], Engine], *, max_batch: int = 64, window_s: float = 0.005
    ) -> None:
        self._load = load
        self._engine: Engine | None = None
        self._max_batch = max_batch
        self._window_s = window_s
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._waiting: list[_Pending] = []
        self._running: dict[Path | None, Decoding] = {}
        self._futures: dict[Row, Future[GenResult]] = {}
        self._stopping = threading.Event()
        # A daemon, and it checks ``_stopping`` every step: a decode never keeps the process
        # alive, and ``close`` returns within a step.
        self._thread = threading.Thread(target=self._run, name="distill-batcher", daemon=True)
        self._thread.start()

    def submit(self, adapter: Path | None, request: GenRequest) -> Future[GenResult]:
        """Queue ``request``; its future's ``cancel()`` stops it, queued or decoding."""
        future: Future[GenResult] = Future()
        self._queue.put(_Pending(adapter, request, future))
        return future

    def close(self, timeout: float = 10.0) -> None:
        """Stop within a decoding step; every unfinished request's future is cancelled."""
        self._stopping.set()
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                if not self._running and not self._waiting:
                    if not self._gather(block=True):
                        return
                    # A short window lets requests sent "at once" arrive before decoding.
                    time.sleep(self._window_s)
                if not self._gather(block=False):
                    return
                self._admit()
                for decoding in list(self._running.values()):
                    self._step(decoding)
        finally:
            self._cancel_all()

    def _gather(self, *, block: bool) -> bool:
        """Move queued requests to ``_waiting``; False once ``close`` was called."""
        try:
            item = self._queue.get(block=block)
            while True:
                if item is None:
                    return False
                self._waiting.append(item)
                item = self._queue.get_nowait()
        except queue.Empty:
            return True

    def _admit(self) -> None:
        """Start the waiting requests that have room, each with its adapter's running rows."""
        self._waiting = [p for p in self._waiting if not p.future.cancelled()]
        for adapter in dict.fromkeys(p.adapter for p in self._waiting):
            running = self._running.get(adapter)
            room = self._max_batch - (len(running.rows) if running else 0)
            batch = [p for p in self._waiting if p.adapter == adapter][:room]
            if batch:
                self._waiting = [p for p in self._waiting if p not in batch]
                self._start(adapter, batch)

    def _start(self, adapter: Path | None, batch: list[_Pending]) -> None:
        try:
            if self._engine is None:
                self._engine = self._load()
        except Exception as exc:  # handed to every waiting HTTP thread, which answers it
            for pending in batch:
                _settle(pending.future, exc)
            return
        rows = [row for row in map(self._row, batch) if row is not None]
        if not rows:
            return
        try:
            started, done = self._engine.start(adapter, rows)
            running = self._running.get(adapter)
            if started is not None and started.rows and running is not None:
                self._engine.join(running, started)
            elif started is not None and started.rows:
                self._running[adapter] = started
        except Exception as exc:  # these new rows fail; the running ones decode on
            for row in rows:
                row.error = exc
            done = [row for row in rows if row in self._futures]
        self._finish(done)

    def _row(self, pending: _Pending) -> Row | None:
        assert self._engine is not None
        try:
            row = self._engine.row(pending.request, pending.future.cancelled)
        except Exception as exc:  # this request alone cannot run: a bad seed, a long prompt
            _settle(pending.future, exc)
            return None
        self._futures[row] = pending.future
        return row

    def _step(self, decoding: Decoding) -> None:
        assert self._engine is not None
        try:
            done = self._engine.step(decoding)
        except Exception as exc:  # the model itself failed: every row of this batch fails
            for row in decoding.rows:
                row.error = exc
            done, decoding.rows = decoding.rows, []
        self._finish(done)
        if not decoding.rows:
            del self._running[decoding.adapter]

    def _finish(self, rows: list[Row]) -> None:
        for row in rows:
            future = self._futures.pop(row)
            if future.cancelled():
                continue
            if row.error is not None:
                _settle(future, row.error)
                continue
            try:
                result = row.result()
            except Exception as exc:  # the row's stream callback failed
                _settle(future, exc)
            else:
                _settle(future, result)

    def _cancel_all(self) -> None:
        pending = [p.future for p in self._waiting] + list(self._futures.values())
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                pending.append(item.future)
        for future in pending:
            future.cancel()
        self._waiting, self._running, self._futures = [], {}, {}


def _settle(future: Future[GenResult], outcome: GenResult | BaseException) -> None:
    """Hand ``outcome`` to ``future``, unless its client cancelled it meanwhile."""
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except InvalidStateError:
        pass
