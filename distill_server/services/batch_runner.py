"""The batch runner: one background thread that runs batches one at a time, through the same
chat path as live requests.

Each request of the input file is checked and prepared by ``Chat.prepare`` and queued by
``Chat.submit``, as a live ``POST /v1/chat/completions`` is: the engine's batcher decodes them
together, up to ``WINDOW`` at a time, and ``Chat.completion`` builds (and, with ``store``,
stores) each answer. A request the chat path refuses (a 400 for its body, a 404 for its
model) is a line of the error file with that status and error body, as OpenAI writes it.

Results are appended to ``<batch dir>/output.jsonl`` and ``errors.jsonl`` as they finish, one
whole line per write. A server that stops (or is killed) mid-batch leaves the batch
``in_progress``; the next start reads those files (a torn last line is cut off), skips the
requests they answer, and runs the rest: no finished line is run or written twice. When every
request has a line the files become the batch's ``output_file_id`` and ``error_file_id``
(purpose ``batch_output``).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from distill_server.errors import ApiError
from distill_server.models import Registry
from distill_server.services.batches import Batches
from distill_server.services.chat import STOPPING, Chat, Prepared
from distill_server.services.schemas import ChatRequest, parse
from distill_shapes.batch import (
    BatchRequest,
    BatchResult,
    InvalidBatchFile,
    read_requests,
    read_results,
)

if TYPE_CHECKING:
    from distill_server.engine.decode import GenResult

log = logging.getLogger("distill_server")

WINDOW = 256
"""Requests of a batch queued on the model at once (the batcher decodes up to 64 together)."""
_POLL_S = 0.2
"""How often the runner looks for a cancel or a stop while it waits on the model."""
_SAVE_S = 0.5
"""How often ``request_counts`` are written to the store while a batch runs."""
OUTPUT, ERRORS = "output.jsonl", "errors.jsonl"
_CANCELLED = "The batch was cancelled before this request ran."


@dataclass
class _Progress:
    """What a batch's result files hold so far."""

    done: set[str] = field(default_factory=set)
    completed: int = 0
    failed: int = 0
    """Requests that ran and failed (a 400 for the body): not those that never ran."""
    input_tokens: int = 0
    output_tokens: int = 0

    def add(self, result: BatchResult) -> None:
        self.done.add(result.custom_id)
        if result.response is None:  # never ran (batch_cancelled)
            return
        if not result.ok:
            self.failed += 1
            return
        self.completed += 1
        usage = (result.body or {}).get("usage") or {}
        self.input_tokens += int(usage.get("prompt_tokens") or 0)
        self.output_tokens += int(usage.get("completion_tokens") or 0)

    def usage(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.input_tokens + self.output_tokens,
        }


class _Stop(Exception):
    """The batch is to stop now: cancelled, or the server is stopping."""


class BatchRunner:
    """Runs batches on a worker thread; ``stop`` leaves the running one to resume later."""

    def __init__(self, batches: Batches, chat: Chat, registry: Registry) -> None:
        self._batches = batches
        self._chat = chat
        self._registry = registry
        self._looked = 0.0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="distill-batches", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        with self._batches.waiting:
            self._batches.waiting.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            batch = self._batches.claim()
            if batch is None:
                with self._batches.waiting:
                    self._batches.waiting.wait(1.0)
                continue
            try:
                self._step(batch)
            except Exception as exc:  # a failure belongs on the batch, not in a dead thread
                log.exception("batch %s failed", batch["id"])
                message = f"The batch failed: {type(exc).__name__}: {exc}"
                self._fail(batch["id"], "batch_failed", message, None)
            finally:
                self._batches.release()

    def _step(self, batch: dict[str, Any]) -> None:
        batch_id, status = batch["id"], batch["status"]
        if status == "cancelling":
            self._finalize(batch_id, "cancelled")
            return
        if status == "validating" and not self._validate(batch):
            return
        status = self._batches.body(batch_id)["status"]
        if status == "in_progress":
            try:
                self._execute(batch_id)
            except _Stop:
                return  # cancelled: claimed again as cancelling; stopping: resumed next start
            self._batches.update(batch_id, "finalizing")
        if self._batches.body(batch_id)["status"] == "finalizing":
            self._finalize(batch_id, "completed")

    def _validate(self, batch: dict[str, Any]) -> bool:
        """Check the input file whole; ``in_progress`` with its model and count, or failed."""
        batch_id = batch["id"]
        total, model, first = 0, None, None
        try:
            for request in self._requests(batch):
                total += 1
                model, first = model or request.model, first or request.line
                if total % 256 == 0:
                    self._check_stop(batch_id)
        except InvalidBatchFile as exc:
            self._fail(batch_id, exc.code, str(exc), exc.line, exc.param)
            return False
        except _Stop:
            return False
        if total == 0:
            self._fail(batch_id, "empty_file", "The input file has no requests.", None)
            return False
        assert model is not None
        try:
            self._registry.resolve(model)
        except ApiError as exc:
            self._fail(batch_id, exc.code or "model_not_found", exc.message, first, "body.model")
            return False
        counts = {"total": total, "completed": 0, "failed": 0}
        self._batches.update(batch_id, "in_progress", model=model, request_counts=counts)
        return True

    def _requests(self, batch: dict[str, Any]) -> Iterator[BatchRequest]:
        try:
            path = self._batches.files.path(batch["input_file_id"])
        except ApiError:
            raise InvalidBatchFile(
                None,
                f"the input file {batch['input_file_id']!r} was deleted before the batch ran.",
                "invalid_file",
                "input_file_id",
            ) from None
        with path.open("rb") as stream:
            yield from read_requests(stream, frozenset({batch["endpoint"]}))

    def _execute(self, batch_id: str) -> None:
        """Run every request the result files do not answer yet; ``_Stop`` when told to."""
        batch = self._batches.body(batch_id)
        work = self._batches.workdir(batch_id)
        progress = _Progress()
        for name in (OUTPUT, ERRORS):
            for result in _results(work / name):
                progress.add(result)
        finished: queue.Queue[Future[GenResult]] = queue.Queue()
        running: dict[Future[GenResult], tuple[str, Prepared]] = {}
        saved = [time.monotonic()]
        with _Appender(work / OUTPUT) as output, _Appender(work / ERRORS) as errors:

            def write(result: BatchResult) -> None:
                (output if result.ok else errors).write(result.to_line())
                progress.add(result)
                if time.monotonic() - saved[0] > _SAVE_S:
                    self._save(batch_id, progress)
                    saved[0] = time.monotonic()

            def wait_one() -> None:
                try:
                    future = finished.get(timeout=_POLL_S)
                except queue.Empty:
                    self._check_stop(batch_id)
                    return
                custom_id, prepared = running.pop(future)
                result = self._result(custom_id, prepared, future)
                if result is None:  # cancelled: the server is stopping
                    raise _Stop
                write(result)
                # A stop (or a cancel) is seen between answers too: while they keep coming,
                # the queue is never empty, and a stopping server would wait for the window.
                self._check_stop(batch_id)

            try:
                for request in self._requests(batch):
                    if request.custom_id in progress.done:
                        continue
                    while len(running) >= WINDOW:
                        wait_one()
                    self._check_stop(batch_id)
                    submitted = self._submit(request)
                    if isinstance(submitted, BatchResult):
                        write(submitted)
                        continue
                    prepared, future = submitted
                    running[future] = (request.custom_id, prepared)
                    future.add_done_callback(finished.put)
                while running:
                    wait_one()
            finally:
                for future in running:
                    future.cancel()
                self._save(batch_id, progress)

    def _submit(self, request: BatchRequest) -> BatchResult | tuple[Prepared, Future[GenResult]]:
        """The request prepared and queued as a live one is, or its error line."""
        try:
            if request.body.get("stream"):
                raise ApiError(
                    400,
                    "A batch's requests are answered whole: leave out `stream` (or set it to "
                    "false).",
                    param="stream",
                    code="invalid_value",
                )
            body = parse(ChatRequest, json.dumps(request.body).encode())
            prepared = self._chat.prepare(body)
            return prepared, self._chat.submit(prepared)
        except ApiError as error:
            if error.message == STOPPING:  # not the request's fault: it runs on the next start
                raise _Stop from None
            return BatchResult.answered(request.custom_id, error.status, error.body())

    def _result(
        self, custom_id: str, prepared: Prepared, future: Future[GenResult]
    ) -> BatchResult | None:
        try:
            result = future.result()
        except CancelledError:
            return None
        except ApiError as error:
            if error.message == STOPPING:
                return None
            return BatchResult.answered(custom_id, error.status, error.body())
        except Exception as exc:  # the request failed while decoding: it fails alone
            message = f"Internal error: {type(exc).__name__}: {exc}"
            crash = ApiError(500, message, type="server_error")
            return BatchResult.answered(custom_id, 500, crash.body())
        return BatchResult.answered(custom_id, 200, self._chat.completion(prepared, result))

    def _check_stop(self, batch_id: str) -> None:
        """``_Stop`` when the server stops or the batch is cancelled (the store is read at
        most every ``_POLL_S``); batches cancelled while waiting their turn are written out."""
        if self._stopping.is_set():
            raise _Stop
        if time.monotonic() - self._looked < _POLL_S:
            return
        self._looked = time.monotonic()
        for other in self._batches.cancelling_idle():  # cancelled while waiting its turn
            self._finalize(other, "cancelled")
        if self._batches.body(batch_id)["status"] == "cancelling":
            raise _Stop

    def _save(self, batch_id: str, progress: _Progress) -> None:
        counts = self._batches.body(batch_id)["request_counts"]
        counts = {**counts, "completed": progress.completed, "failed": progress.failed}
        self._batches.update(batch_id, request_counts=counts, usage=progress.usage())

    def _finalize(self, batch_id: str, status: str) -> None:
        """The result files become the batch's files; ``status`` (completed or cancelled)."""
        batch = self._batches.body(batch_id)
        work = self._batches.workdir(batch_id)
        progress = _Progress()
        for name in (OUTPUT, ERRORS):
            for result in _results(work / name):
                progress.add(result)
        if status == "cancelled":
            self._not_run(batch, work, progress)
        changes: dict[str, Any] = {}
        for name, key in ((OUTPUT, "output_file_id"), (ERRORS, "error_file_id")):
            path = work / name
            if batch.get(key) or not path.is_file() or path.stat().st_size == 0:
                continue
            with path.open("rb") as stream:
                os.fsync(stream.fileno())
            filename = f"{batch_id}_{'output' if name == OUTPUT else 'error'}.jsonl"
            changes[key] = self._batches.files.add_copy(filename, "batch_output", path)["id"]
            # Kept at once: a server killed before the batch is final does not add it twice.
            self._batches.update(batch_id, **changes)
        counts = {**batch["request_counts"], "completed": progress.completed}
        counts["failed"] = progress.failed
        self._batches.update(batch_id, status, request_counts=counts, usage=progress.usage())
        shutil.rmtree(work, ignore_errors=True)

    def _not_run(self, batch: dict[str, Any], work: Path, progress: _Progress) -> None:
        """``batch_cancelled`` lines for the requests of a cancelled batch that never ran."""
        try:
            missing = [r for r in self._requests(batch) if r.custom_id not in progress.done]
        except InvalidBatchFile:
            return  # cancelled before its file was checked: there is nothing to answer
        with _Appender(work / ERRORS) as errors:
            for request in missing:
                result = BatchResult.not_run(request.custom_id, "batch_cancelled", _CANCELLED)
                errors.write(result.to_line())
                progress.add(result)

    def _fail(
        self,
        batch_id: str,
        code: str,
        message: str,
        line: int | None,
        param: str | None = None,
    ) -> None:
        error = {"code": code, "message": message, "param": param, "line": line}
        self._batches.update(batch_id, "failed", errors={"object": "list", "data": [error]})
        shutil.rmtree(self._batches.root / batch_id, ignore_errors=True)


def _results(path: Path) -> Iterator[BatchResult]:
    """A result file's lines, after cutting off a line a killed server left half-written."""
    if not path.is_file():
        return
    data = path.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) != len(data):
        with path.open("r+b") as stream:
            stream.truncate(len(whole))
    yield from read_results(whole.splitlines())


class _Appender:
    """Appends whole lines to a file, each in one unbuffered write."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stream: IO[bytes] | None = None

    def __enter__(self) -> _Appender:
        fd = os.open(self._path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        self._stream = os.fdopen(fd, "ab", buffering=0)
        return self

    def write(self, line: bytes) -> None:
        assert self._stream is not None
        view = memoryview(line)
        while view:
            view = view[self._stream.write(view) or 0 :]

    def __exit__(self, *_: object) -> None:
        if self._stream is not None:
            self._stream.close()
