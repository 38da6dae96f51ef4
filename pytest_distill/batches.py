"""``--distill-batch``: a role's data-file cases sent as one Batch API batch per model, not as
live calls (half the price on OpenAI; answered within the 24 h completion window).

Before the first item of a batch role runs, every request of that role's items in the session
is written to input files (``distill_shapes.batch``: one model per file, within the API's
limits), each uploaded with ``purpose=batch`` and run as one batch, followed to its end with a
progress line; its output and error files are read back by ``custom_id`` and each item takes
its own answers. A request without a good answer (a line's 4xx/5xx, a batch that expired,
failed or was cancelled before it ran the line) is an error of its item, with the reason.

Idempotent as the fine-tuning jobs are: each input file is keyed by its content (the
requests, and the endpoint); the key, the run that made the batch and the batch id are kept
in ``.distill/state.json`` (under ``batches``) and in the batch's metadata, so a rerun after
Ctrl-C or a crash follows the batch already running (or reads the one already finished), and
a create that timed out or got a 5xx is looked up by its metadata before it is tried again.
Once every item took its answers, the entry is marked done: the next session makes a new batch.

``--distill-no-wait`` submits (or finds) the batches without following them: an item of a
batch not yet final is skipped as pending (:class:`BatchPending`), and the same command run
again picks the batch up from the state and reads its answers once it is done.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill_shapes.batch import (
    COMPLETION_WINDOW,
    BatchRequest,
    BatchResult,
    read_requests,
    results_by_id,
    split_requests,
)
from pytest_distill.atomic import write_atomic
from pytest_distill.roles import describe_error, may_have_created
from pytest_distill.text import shorten

if TYPE_CHECKING:
    import openai

FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
GONE = frozenset({"failed", "cancelled", "expired"})
"""A batch in one of these states is not found again by its metadata (its file may be); one
the state names is read once more, so its items error with the reason, then done with."""
HEARTBEAT_S = 30.0
MAX_POLL_S = 60.0
Progress = Callable[[str], None]
Bodies = Callable[[], Sequence[dict[str, Any]]]


class BatchItemError(RuntimeError):
    """An item of a batch role without its answer; the message is the reason, in one line."""


class BatchPending(RuntimeError):
    """``--distill-no-wait``: the item's batch is not final yet; the message says which batch
    and what to do."""


class BatchState:
    """The ``batches`` entries of ``.distill/state.json``, by input key; each save reads the file
    again, so the other entries (the fine-tuning jobs, the fine-tuned model) are kept."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _data(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (ValueError, OSError) as exc:
            raise RuntimeError(
                f"{self.path}: unreadable state ({exc}); delete the file to start afresh"
            ) from None
        return data if isinstance(data, dict) else {}

    def entry(self, key: str) -> dict[str, Any]:
        return dict(self._data().get("batches", {}).get(key, {}))

    def replace(self, key: str, entry: Mapping[str, Any] | None) -> None:
        """The entry of ``key`` set to ``entry`` as a whole (None: removed)."""
        data = self._data()
        batches = data.setdefault("batches", {})
        if entry is None:
            batches.pop(key, None)
        else:
            batches[key] = dict(entry)
        write_atomic(self.path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())

    def save(self, key: str, **values: Any) -> None:
        data = self._data()
        batches = data.setdefault("batches", {})
        batches[key] = {**batches.get(key, {}), **values}
        write_atomic(self.path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def input_key(endpoint: str, requests: Sequence[BatchRequest]) -> str:
    """An input file's key: its requests (a stored completion's metadata left out, since it
    names the session that sent it) and the endpoint that runs them."""
    material = [endpoint] + [
        [r.custom_id, {k: v for k, v in r.body.items() if k != "metadata"}] for r in requests
    ]
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class Finished:
    """A batch at its end: its id, status, and results by ``custom_id``; ``reason``: why a
    request without a result has none."""

    batch_id: str
    status: str
    results: dict[str, BatchResult]
    reason: str
    pending: bool = False  # --distill-no-wait: submitted, not final yet
    done: Callable[[], None] = lambda: None  # marks its state entry done (its answers taken)


def interrupted_line(batch_id: str, role: str, base_url: str) -> str:
    """What Ctrl-C while a batch runs says: the batch goes on; how to collect or cancel it."""
    return (
        f"distill: interrupted; batch {batch_id} of role {role} keeps running on the endpoint. "
        f"Run the same command again to collect it (no new batch is made), or cancel it: "
        f"client.batches.cancel({batch_id!r}) with the OpenAI SDK, or "
        f"POST {base_url.rstrip('/')}/batches/{batch_id}/cancel"
    )


def pending_reason(batch_id: str, status: str) -> str:
    """What a pending item says (its skip reason)."""
    return f"batch {batch_id} still {status}; run again to collect"


def run_batch(
    client: openai.OpenAI,
    data: bytes,
    requests: list[BatchRequest],
    *,
    key: str,
    role: str,
    run_id: str,
    state: BatchState,
    progress: Progress,
    poll_interval: float,
    sleep: Callable[[float], None] = time.sleep,
    wait: bool = True,
) -> Finished:
    """Find or start the batch of one input file (``requests``: its lines, ``key``: its
    :func:`input_key`), follow it to its end (``wait``: else a batch not yet final is returned
    as pending), read its results."""
    batch = _find_or_start(client, data, requests, key, role, run_id, state, progress)
    if not wait and batch.status not in FINAL:
        progress(f"{progress_line(batch, role)}; not waiting for it (--distill-no-wait)")
        reason = pending_reason(batch.id, batch.status)
        return Finished(batch.id, batch.status, {}, reason, pending=True)
    try:
        batch = follow(client, batch, role, progress, poll_interval, sleep)
    except KeyboardInterrupt:
        progress(interrupted_line(batch.id, role, str(client.base_url)))
        raise
    files = [
        client.files.content(file_id).content
        for file_id in (batch.output_file_id, batch.error_file_id)
        if file_id
    ]
    results = results_by_id(files)

    def done() -> None:
        """Every item took its answers from this batch: a later session starts anew."""
        if state.entry(key):
            state.save(key, done=True)

    return Finished(batch.id, batch.status, results, _missing_reason(batch), done=done)


def _find_or_start(
    client: openai.OpenAI,
    data: bytes,
    requests: list[BatchRequest],
    key: str,
    role: str,
    run_id: str,
    state: BatchState,
    progress: Progress,
) -> Any:
    import openai

    known = state.entry(key)
    if known and not known.get("done"):
        run = str(known.get("run") or run_id)
        if known.get("batch_id"):
            try:
                batch = client.batches.retrieve(known["batch_id"])
            except openai.NotFoundError:
                progress(f"distill: the endpoint no longer knows batch {known['batch_id']}")
                batch = None
            if batch is not None and batch.status not in GONE:
                progress(f"distill: resuming batch {batch.id} of role {role} ({batch.status})")
                return batch
            if batch is not None:  # ended badly since: its items error once, never a quiet redo
                progress(
                    f"distill: batch {batch.id} of role {role} ended {batch.status}; its items "
                    "take what it answered and error for the rest (the next run starts anew)"
                )
                return batch
        found = _listed(client, key, run)
        if found is not None:
            state.save(key, batch_id=found.id, file_id=found.input_file_id)
            progress(f"distill: found batch {found.id} ({found.status}) for these requests")
            return found
    else:
        run, known = run_id, {}
    model = requests[0].model if requests else None
    state.save(key, run=run, role=role, model=model, done=False, batch_id=None)
    file_id = known.get("file_id") or _upload(client, data, key, progress)
    state.save(key, file_id=file_id)
    batch = _create(client, key, run, role, file_id)
    state.save(key, batch_id=batch.id)
    progress(
        f"distill: started batch {batch.id} of {len(requests)} requests for role {role} "
        f"({model}); it runs within {COMPLETION_WINDOW}"
    )
    return batch


def _listed(client: openai.OpenAI, key: str, run: str) -> Any:
    """The batch of these requests and this run, by its metadata (the first page, newest
    first: the list takes no metadata filter)."""
    for batch in client.batches.list(limit=100).data:
        metadata = batch.metadata or {}
        if (
            metadata.get("distill_key") == key
            and metadata.get("distill_run") == run
            and batch.status not in GONE
        ):
            return batch
    return None


def _upload(client: openai.OpenAI, data: bytes, key: str, progress: Progress) -> str:
    name = f"distill-batch-{key[:12]}.jsonl"
    uploaded = client.files.create(file=(name, data), purpose="batch")
    progress(f"distill: uploaded the batch input as {uploaded.id} ({name})")
    return str(uploaded.id)


def _create(client: openai.OpenAI, key: str, run: str, role: str, file_id: str) -> Any:
    """Create without SDK retries: a POST that timed out or got a 5xx may have created the batch
    after all, so it is looked up by its metadata before it is tried again."""
    once = client.with_options(max_retries=0)
    metadata = {"distill_key": key, "distill_run": run, "distill_role": role}
    for attempt in range(3):
        try:
            return once.batches.create(
                input_file_id=file_id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata=metadata,
            )
        except Exception as exc:
            if not may_have_created(exc):
                raise
            found = _listed(client, key, run)
            if found is not None:
                return found
            if attempt == 2:
                raise
            time.sleep(2**attempt)
    raise AssertionError("unreachable")


def follow(
    client: openai.OpenAI,
    batch: Any,
    role: str,
    progress: Progress,
    poll_interval: float,
    sleep: Callable[[float], None] = time.sleep,
) -> Any:
    """Poll the batch until it is final: a line when its status or counts change, else one
    every 30 s. Polls start ``poll_interval`` apart and grow to a minute apart."""
    started = time.monotonic()
    last_line, last_shown = "", 0.0
    interval = poll_interval
    while True:
        line = progress_line(batch, role)
        elapsed = time.monotonic() - started
        if line != last_line or elapsed - last_shown >= HEARTBEAT_S:
            progress(f"{line}, {elapsed:.0f}s elapsed")
            last_line, last_shown = line, elapsed
        if batch.status in FINAL:
            return batch
        if interval > 0:
            sleep(interval)
            interval = min(MAX_POLL_S, interval * 1.5)
        batch = client.batches.retrieve(batch.id)


def progress_line(batch: Any, role: str) -> str:
    counts = batch.request_counts
    line = f"distill: batch {batch.id} of role {role} {batch.status}"
    if counts is not None and counts.total:
        line += f", {counts.completed + counts.failed}/{counts.total} requests done"
        if counts.failed:
            line += f", {counts.failed} failed"
    return line


def _missing_reason(batch: Any) -> str:
    """Why a request of this batch has no result line."""
    if batch.status == "completed":
        return f"batch {batch.id} completed without a result for this request"
    errors = getattr(getattr(batch, "errors", None), "data", None) or []
    why = "; ".join(e.message for e in errors if getattr(e, "message", None))
    ran = {"expired": "expired before it ran this request", "cancelled": "was cancelled"}
    return f"batch {batch.id} {ran.get(batch.status, batch.status)}" + (
        f": {shorten(why, 300)}" if why else ""
    )


@dataclass(frozen=True, slots=True)
class BatchAnswer:
    """One request's answer: the chat completion's JSON body, the batch that gave it and the
    request's line (its ``custom_id``), for the training set's lineage."""

    body: dict[str, Any]
    batch_id: str
    custom_id: str


Outcome = tuple[BatchAnswer, ...] | BatchItemError | BatchPending
Runner = Callable[["openai.OpenAI", bytes, list[BatchRequest]], Finished]
"""Runs one input file's batch (:func:`run_batch` in the session's scope): the client, the
file's bytes and its requests."""


@dataclass
class RoleBatches:
    """The batch mode of one role in a session: its items' requests, by node id, run as
    batches the first time an item asks for its answers."""

    role: str
    items: dict[str, Bodies] = field(default_factory=dict)
    _answers: dict[str, Outcome] | None = None
    _finished: list[Finished] = field(default_factory=list)
    _taken: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def plan(self, nodeid: str, bodies: Bodies) -> None:
        self.items[nodeid] = bodies

    def run(
        self,
        client: Callable[[], openai.OpenAI],
        run: Runner,
    ) -> None:
        """Make, follow and read the batches now, unless done before."""
        with self._lock:
            if self._answers is None:
                self._answers = self._run(client, run)

    @property
    def pending(self) -> list[Finished]:
        """The batches left running (``--distill-no-wait``), once run."""
        return [f for f in self._finished if f.pending]

    def answers(
        self,
        nodeid: str,
        client: Callable[[], openai.OpenAI],
        run: Runner,
    ) -> tuple[BatchAnswer, ...]:
        """The item's answers (one per repeat), the batches run the first time;
        ``BatchItemError`` with the reason when one has no good answer, ``BatchPending`` when
        its batch is still running (``--distill-no-wait``)."""
        with self._lock:
            if self._answers is None:
                self._answers = self._run(client, run)
            found = self._answers.get(nodeid)
            self._taken.add(nodeid)
            if self._taken >= self.items.keys():
                for finished in self._finished:
                    if not finished.pending:
                        finished.done()
                self._finished = [f for f in self._finished if f.pending]
        if found is None:
            raise BatchItemError(f"no batch request was planned for {nodeid}")
        if isinstance(found, Exception):
            raise found
        return found

    def _run(
        self,
        client: Callable[[], openai.OpenAI],
        run: Runner,
    ) -> dict[str, Outcome]:
        ids: dict[str, list[str]] = {}
        requests = []
        try:
            for nodeid, bodies in self.items.items():
                for n, body in enumerate(bodies(), 1):
                    custom_id = f"{nodeid}#{n}"
                    ids.setdefault(nodeid, []).append(custom_id)
                    requests.append(BatchRequest(custom_id, dict(body)))
            files = [
                (data, list(read_requests(data.splitlines()))) for data in split_requests(requests)
            ]
            sdk = client()
            finished = [run(sdk, data, lines) for data, lines in files]
        except Exception as exc:
            why = f"batch of role {self.role} failed: {shorten(describe_error(exc), 300)}"
            return {nodeid: BatchItemError(why) for nodeid in self.items}
        self._finished = finished
        by_request: dict[str, Finished] = {}
        for (_, lines), one in zip(files, finished, strict=True):
            for request in lines:
                by_request[request.custom_id] = one
        return {nodeid: _answer(custom_ids, by_request) for nodeid, custom_ids in ids.items()}


def _answer(custom_ids: list[str], by_request: Mapping[str, Finished]) -> Outcome:
    answers = []
    for custom_id in custom_ids:
        finished = by_request.get(custom_id)
        if finished is None:
            return BatchItemError("the batch gave no result for this request")
        if finished.pending:
            return BatchPending(finished.reason)
        result = finished.results.get(custom_id)
        if result is None:
            return BatchItemError(finished.reason)
        if not result.ok or result.body is None:
            return BatchItemError(
                f"batch {finished.batch_id} request failed: {shorten(result.message(), 300)}"
            )
        answers.append(BatchAnswer(result.body, finished.batch_id, custom_id))
    return tuple(answers)
