"""Continuous batching: concurrent chat requests for one model decode together, joining and
leaving the running batch between steps.

Each base model gets one worker thread, which owns the engine (so adapters are switched
without locks). The worker decodes one token for every running request per step; between
steps it takes the requests that arrived, runs their prompts and adds them to the running
batch of their model id (their adapter), up to ``max_batch`` rows and within the engine's
budget for keys and values (a share of the memory available as the model loaded; a request
past it waits in the queue, so a busy server neither swaps nor runs out). A short request that
arrives while a long one decodes so waits for a step, not for the long one.

Prompts run in chunks (chunked prefill): each step runs up to ``prefill_chunk`` prompt tokens
(by default the engine's: 512 on an accelerator, 256 on a CPU) besides the running rows'
decoding; beside other requests, only as many as run in about one decoding step (both timed
as the worker runs), so a long prompt neither stalls the running streams nor keeps a short
request waiting for the whole of it. A group of prompts alone takes up to ``IDLE_CHUNKS``
times as much (chunks, and decoding steps' time), so a batch of prompts runs in a few wide
steps and a request that arrives meanwhile waits a few decoding steps at most; in a burst
(more rows waiting for their prompts than decoding) a step runs a whole chunk of prompts. The
shortest prompts go first, save a quarter of the chunk that the oldest prompt always gets, so
a long prompt still progresses.

``submit`` returns a ``Future``: cancelling it, queued or decoding, frees the request's row at
the next step.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from distill_server.devices import release_freed_memory

if TYPE_CHECKING:
    from distill_server.engine.decode import (
        Decoding,
        Engine,
        GenRequest,
        GenResult,
        Prefill,
        Row,
    )


IDLE_CHUNKS = 2
"""How many chunks a step of prompts may run when no other request waits on it."""
COUNTS_ENV = "DISTILL_ENGINE_COUNTS"
"""Set (by ``benchmarks/bench_main_job.py``): each time the batcher goes idle it prints the
engine's token counts, cumulative, to its standard output (the embedded server's log)."""

MIN_CHUNK = 16
"""The fewest prompt tokens a step runs, so a long prompt always moves on."""


def _average(mean: float | None, value: float, weight: float = 0.2) -> float:
    return value if mean is None else (1 - weight) * mean + weight * value


@dataclass(frozen=True, slots=True, eq=False)
class _Pending:
    adapter: Path | None
    request: GenRequest
    future: Future[GenResult]


class Batcher:
    """Queues requests for one base model and decodes them on a worker thread."""

    def __init__(
        self,
        load: Callable[[], Engine],
        *,
        max_batch: int = 64,
        window_s: float = 0.005,
        prefill_chunk: int | None = None,
    ) -> None:
        if prefill_chunk is not None and prefill_chunk < 1:
            raise ValueError(f"prefill_chunk is {prefill_chunk}; it must be at least 1.")
        self._load = load
        self._engine: Engine | None = None
        self._max_batch = max_batch
        self._prefill_chunk = prefill_chunk
        self._window_s = window_s
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._waiting: list[_Pending] = []
        self._rows: dict[_Pending, Row] = {}
        """Waiting requests already made into rows (tokenized), kept until they start."""
        self._running: dict[Path | None, Decoding] = {}
        # Measured as the batcher runs (moving averages): a decoding step's seconds and a
        # prompt token's, so a step of prompts beside running rows takes about a decoding
        # step's time whatever the machine, the model and the prompt's length so far.
        self._step_s: float | None = None
        self._token_s: float | None = None
        self._prefilling: list[Prefill] = []
        self._futures: dict[Row, Future[GenResult]] = {}
        self._stopping = threading.Event()
        # Every unsettled future, so ``stop_requests`` can cancel them from any thread at once.
        self._outstanding: set[Future[GenResult]] = set()
        self._lock = threading.Lock()
        # A daemon, and it checks ``_stopping`` every step: a decode never keeps the process
        # alive, and ``close`` returns within a step.
        self._thread = threading.Thread(target=self._run, name="distill-batcher", daemon=True)
        self._thread.start()

    def submit(self, adapter: Path | None, request: GenRequest) -> Future[GenResult]:
        """Queue ``request``; its future's ``cancel()`` stops it, queued or decoding."""
        future: Future[GenResult] = Future()
        with self._lock:
            if self._stopping.is_set():
                future.cancel()
                return future
            self._outstanding.add(future)
        future.add_done_callback(self._settled)
        self._queue.put(_Pending(adapter, request, future))
        return future

    def _settled(self, future: Future[GenResult]) -> None:
        with self._lock:
            self._outstanding.discard(future)

    def stop_requests(self) -> None:
        """Cancel every unfinished request's future now (later ones are cancelled as they
        come), without waiting for the decoding step under way; the worker stops after it."""
        with self._lock:
            self._stopping.set()
            pending = list(self._outstanding)
        self._queue.put(None)
        for future in pending:
            future.cancel()

    def close(self, timeout: float = 10.0) -> None:
        """Stop within a decoding step; every unfinished request's future is cancelled."""
        self.stop_requests()
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                if not self._running and not self._waiting and not self._prefilling:
                    if self._queue.empty():  # idle: what the batches freed goes back
                        release_freed_memory()
                        if self._engine is not None and os.environ.get(COUNTS_ENV):
                            print(f"engine counts: {dict(self._engine.counts)}", flush=True)
                    if not self._gather(block=True):
                        return
                    # A short window lets requests sent "at once" arrive before decoding.
                    time.sleep(self._window_s)
                if not self._gather(block=False):
                    return
                self._admit()
                self._prefill()
                # No local keeps a finished batch (and its keys and values) alive while idle.
                for adapter in list(self._running):
                    self._step(self._running[adapter])
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
        """Start the waiting requests that have room, each with its adapter's running rows.

        Room is ``max_batch`` rows, and the engine's budget for keys and values: a request
        waits (in order) while the rows running and starting hold it, unless nothing does.
        An adapter's rows decode as one batch, every row as wide as the widest (the others
        padded): a row costs the width it brings to every row, not its own length alone.
        """
        for pending in [p for p in self._waiting if p.future.cancelled()]:
            row = self._rows.pop(pending, None)
            if row is not None:
                self._futures.pop(row, None)
        self._waiting = [p for p in self._waiting if not p.future.cancelled()]
        if not self._waiting or not self._loaded():
            return
        engine = self._engine
        assert engine is not None
        token = engine.kv_token_bytes
        # Per adapter: rows, the width they reach together, the bytes their caches hold now.
        shapes: dict[Path | None, tuple[int, int, int]] = {}
        groups: list[Decoding | Prefill] = [*self._running.values(), *self._prefilling]
        for group in groups:
            rows, width, held = shapes.get(group.adapter, (0, 0, 0))
            more, wide, holds = engine.kv_shape(group)
            shapes[group.adapter] = (rows + more, max(width, wide), held + holds)

        def cost(shape: tuple[int, int, int]) -> int:
            rows, width, held = shape
            return max(rows * width * token, held)

        used = sum(cost(shape) for shape in shapes.values())
        for adapter in dict.fromkeys(p.adapter for p in self._waiting):
            shape = shapes.get(adapter, (0, 0, 0))
            room = self._max_batch - shape[0]
            batch: list[Row] = []
            for pending in [p for p in self._waiting if p.adapter == adapter]:
                if len(batch) >= room:
                    break
                row = self._rows.get(pending) or self._row(pending)
                if row is None:  # it cannot run; its future has the error
                    self._waiting.remove(pending)
                    continue
                self._rows[pending] = row
                grown = (shape[0] + 1, max(shape[1], engine.kv_length(row)), shape[2])
                need = cost(grown) - cost(shape)
                if used + need > engine.kv_budget and (used or batch):
                    break
                used, shape = used + need, grown
                batch.append(row)
                self._waiting.remove(pending)
                del self._rows[pending]
            if batch:
                self._start(adapter, batch)

    def _loaded(self) -> bool:
        """Load the engine on first use; if that fails, every waiting request gets the error."""
        if self._engine is not None:
            return True
        try:
            self._engine = self._load()
        except Exception as exc:  # handed to every waiting HTTP thread, which answers it
            for pending in self._waiting:
                _settle(pending.future, exc)
            self._waiting = []
            return False
        return True

    def _start(self, adapter: Path | None, rows: list[Row]) -> None:
        assert self._engine is not None
        try:
            self._prefilling += self._engine.prefills(adapter, rows, self._chunk)
        except Exception as exc:  # these new rows fail; the running ones decode on
            for row in rows:
                row.error = exc
            self._finish(rows)

    def _prefill(self) -> None:
        """Run up to ``prefill_chunk`` tokens of the prompts waiting to run.

        The oldest gets a quarter of the chunk (or what it has left); then the shortest go
        first, so a short prompt runs within a step whatever long prompts are running.
        """
        for prefill in self._prefilling:
            assert self._engine is not None
            self._finish(self._engine.drop_cancelled(prefill))
        self._prefilling = [p for p in self._prefilling if p.rows]
        if not self._prefilling:
            return
        oldest = self._prefilling[0]
        # Alone (nothing decoding, one group of prompts) a step may take more: the loop still
        # looks for new requests between steps, and a newcomer brings the budget back down.
        alone = not self._running and len(self._prefilling) == 1 and not self._waiting
        budget = self._budget(IDLE_CHUNKS if alone else 1)
        if self._burst():
            budget = max(budget, self._chunk)
        shares = {oldest: min(oldest.remaining, max(budget // 4, 1))}
        left = budget - shares[oldest]
        for prefill in sorted(self._prefilling, key=lambda p: p.remaining):
            more = min(prefill.remaining - shares.get(prefill, 0), left)
            if more > 0:
                shares[prefill] = shares.get(prefill, 0) + more
                left -= more
        for prefill, tokens in shares.items():
            self._advance(prefill, tokens)

    def _burst(self) -> bool:
        """More rows wait for their prompts than decode: a burst of requests beside a few
        streams. Its prompts then take a whole chunk a step, which costs little more than a
        thin one (a forward pass reads every weight whatever its width), and its rows decode
        together in fewer, wider steps, rather than a few at a time while the rest wait."""
        decoding = sum(len(d.rows) for d in self._running.values())
        return sum(len(p.rows) for p in self._prefilling) > decoding

    def _budget(self, chunks: int) -> int:
        """Prompt tokens for a step: what runs in about ``chunks`` decoding steps, between
        ``MIN_CHUNK`` and ``chunks`` chunks. Alone a step may take a few decoding steps' time
        (a request that arrives meanwhile waits for it), beside other requests about one."""
        most = self._chunk * chunks
        if self._step_s is None or self._token_s is None:
            return most
        fits = int(chunks * self._step_s / self._token_s)
        return max(min(MIN_CHUNK, most), min(fits, most))

    def _advance(self, prefill: Prefill, tokens: int) -> None:
        assert self._engine is not None
        try:
            began = time.perf_counter()
            started = self._engine.advance(prefill, tokens)
            self._token_s = _average(self._token_s, (time.perf_counter() - began) / tokens)
            if started is None:
                return
            self._prefilling.remove(prefill)
            done = self._engine.leave(started)
            running = self._running.get(prefill.adapter)
            if started.rows and running is not None:
                self._engine.join(running, started)
            elif started.rows:
                self._running[prefill.adapter] = started
        except Exception as exc:  # this group's rows fail; the others go on
            for row in prefill.rows:
                row.error = exc
            done = [row for row in prefill.rows if row in self._futures]
            if prefill in self._prefilling:
                self._prefilling.remove(prefill)
        self._finish(done)

    @property
    def _chunk(self) -> int:
        assert self._engine is not None
        return self._prefill_chunk or self._engine.prefill_chunk

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
            began = time.perf_counter()
            done = self._engine.step(decoding)
            self._step_s = _average(self._step_s, time.perf_counter() - began)
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
        self._waiting, self._running, self._futures, self._rows = [], {}, {}, {}
        self._prefilling = []


def _settle(future: Future[GenResult], outcome: GenResult | BaseException) -> None:
    """Hand ``outcome`` to ``future``, unless its client cancelled it meanwhile."""
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except InvalidStateError:
        pass
