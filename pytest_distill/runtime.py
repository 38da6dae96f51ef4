"""What one pytest process holds for the session: role clients, the embedded server, the
concurrent prefetch of model calls, and the results seen so far. Kept in ``config.stash``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pytest

from distill_shapes.batch import BatchRequest
from pytest_distill import paths
from pytest_distill.batches import (
    BatchAnswer,
    BatchItemError,
    BatchState,
    Finished,
    RoleBatches,
    Runner,
    input_key,
    run_batch,
)
from pytest_distill.options import Settings
from pytest_distill.roles import (
    LOCAL_API_KEY_ENV,
    ChatReplay,
    Endpoint,
    RoleConfig,
    answer_from,
    make_openai,
    tls_context,
)

if TYPE_CHECKING:
    import ssl

    import openai

T = TypeVar("T")
BatchScope = Callable[[str, str, BatchState], AbstractContextManager[tuple[BatchState, bool]]]
"""Where one batch's traffic goes (set by recording): given the role, the input key and the
state, the state to use and whether it replays (then nothing waits)."""
RUNTIME_KEY = pytest.StashKey["Runtime"]()
RETIREMENT_WINDOW_DAYS = 60
LOCAL_PLACEHOLDER = "http://local.invalid/v1"  # the embedded server's URL while replaying
PROGRESS_EVERY_TTY_S = 10.0
"""The least time between two progress lines of the model calls on a terminal..."""
PROGRESS_EVERY_LOG_S = 30.0
"""...and in a log (output not a terminal, or CI)."""


class DistillWarning(pytest.PytestWarning):
    """A warning from pytest-distill (for example: a role's model retires soon)."""


@dataclass
class Runtime:
    settings: Settings
    order: dict[str, int] = field(default_factory=dict)
    distill_error: str | None = None
    training: dict[str, Any] | None = None  # the distill step's lineage, for the report
    distill_deferred: bool = False  # --distill-no-wait left a job running: the gate waits
    replaying: bool = False  # replaying cassettes: nothing waits (set by recording)
    # The cassettes' transport (set by recording), called with the TLS context to use.
    transport: Callable[[ssl.SSLContext], Any] | None = None
    # The cassettes' answers to chat calls, taken without the SDK's round trip (set by recording).
    replay: ChatReplay | None = None
    batch_scope: BatchScope | None = None  # the cassettes of each batch (set by recording)
    notice: Callable[[str], None] | None = None  # a line of the plugin's own on the terminal
    item_notice: Callable[[str], None] | None = None  # the same, just before an item starts
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    _clients: dict[str, openai.OpenAI] = field(default_factory=dict)
    _tls: ssl.SSLContext | None = None  # one TLS context for every role's client
    _local: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pool: CallPool | None = None
    _futures: dict[str, Future[Any]] = field(default_factory=dict)
    _ahead_to: int = 0  # the items before this index were handed out by ``ahead``
    _retirement_checked: set[str] = field(default_factory=set)
    # Progress of the prefetched model calls, shown between items (``progress``).
    progress_every: float | None = None  # seconds between lines; None: no progress lines
    clock: Callable[[], float] = time.monotonic
    calls_total: int = 0  # items whose model calls the prefetch runs (set after collection)
    _progress_lock: threading.Lock = field(default_factory=threading.Lock)
    _submitted: int = 0
    _answered: int = 0
    _calls_since: float | None = None
    _rate_since: tuple[float, int] | None = None  # the rate is counted from here (time, answered)
    _progress_at: float | None = None
    _converting: tuple[list[str], float, Callable[[], list[str]]] | None = None
    _converted: str | None = None
    _batches: dict[str, RoleBatches] = field(default_factory=dict)  # --distill-batch, by role

    def role(self, name: str) -> RoleConfig:
        return self.settings.role_configs[name]

    def client(self, role: str) -> openai.OpenAI:
        """The SDK client of a role, made once and shared between threads."""
        return self.client_for(self.role(role))

    def client_for(self, config: RoleConfig) -> openai.OpenAI:
        with self._lock:
            if config.name not in self._clients:
                # Each role its own client (base URL, key, timeout, retries), one TLS context.
                if self._tls is None:
                    self._tls = tls_context(offline=self.settings.record_mode == "none")
                self._clients[config.name] = client = make_openai(
                    config,
                    local_url=self._local_url,
                    timeout=self.settings.timeout,
                    max_retries=self.settings.max_retries,
                    transport=self.transport(self._tls) if self.transport is not None else None,
                    tls=self._tls,
                )
                if self.replay is not None:
                    answer_from(client, self.replay)
            return self._clients[config.name]

    def use_finetuned(
        self, model: str, endpoint: Endpoint, key_env: str | None = None, label: str = "finetuned"
    ) -> None:
        """After training: the fine-tuned model becomes the ``finetuned`` role; it is served
        where it trained, so it takes the trainer's key variable unless it names its own.
        ``label="sft"``: the first stage's model of a two-stage method, a role of its own that
        is configured as ``finetuned`` is."""
        configs = dict(self.settings.role_configs)
        own = configs["finetuned"].api_key_env
        configs[label] = dataclasses.replace(
            configs["finetuned"],
            name=label,
            model=model,
            endpoint=endpoint,
            api_key_env=own or key_env,
        )
        self.settings = dataclasses.replace(self.settings, role_configs=configs)
        with self._lock:
            stale = self._clients.pop(label, None)
        if stale is not None:
            stale.close()

    def hold_local_server(self) -> None:
        """Start (or join) the embedded server now, if a role or the trainer uses it.

        An xdist controller calls this before its workers start: it outlives them, so owning
        the server there means the workers share its model and the controller's training and
        fine-tuned items find it still running, instead of racing a worker's server as it stops.
        """
        settings = self.settings
        endpoints = [c.endpoint for c in settings.role_configs.values() if c.model]
        endpoints.append(
            settings.training.trainer_endpoint or settings.role_configs["student"].endpoint
        )
        if any(e.kind == "local" for e in endpoints if e is not None):
            with self._lock:
                self._local_url()

    def _local_url(self) -> str:
        # Called with self._lock held, from client().
        if self.replaying:  # served from cassettes: no server, no model
            return LOCAL_PLACEHOLDER
        if self._local is None:
            from distill_server.starter import pending_conversions, shared_server

            data_dir = paths.server_dir(self.settings.rootpath)
            models = dict(self.settings.local_models) or None
            notice = self.notice or (lambda line: None)
            pending = pending_conversions(data_dir, models) if self.notice else []
            for model_id in pending:
                notice(
                    f"distill: the embedded server converts {model_id} from GGUF once (about "
                    "half a minute on 2 cores; later runs load the converted copy); the first "
                    "model call waits for it"
                )
            if pending:
                # The server converts when a model is first used, not as it starts: the end is
                # seen as model calls come back (``_call_answered``) and shown between items.
                self._converting = (
                    pending,
                    self.clock(),
                    lambda: pending_conversions(data_dir, models),
                )
            # Started here, or the one another process (an xdist worker, a concurrent session,
            # a distill-server) already runs on this data directory: one model in memory.
            self._local = shared_server(
                data_dir,
                models,
                os.environ.get(LOCAL_API_KEY_ENV) or None,
                device=self.settings.local_device,
            )
        return str(self._local.base_url)

    # --- concurrent prefetch of data-file calls ---------------------------------------------

    def ahead(self, items: Sequence[T], start: int) -> Sequence[T]:
        """The items to prefetch as item ``start`` runs: those of the window from it (twice
        the concurrency) not handed out before, so that a session hands out each item once."""
        end = min(start + 2 * self.settings.concurrency, len(items))
        fresh = items[max(start, self._ahead_to) : end]
        self._ahead_to = max(self._ahead_to, end)
        return fresh

    def prefetch(self, key: str, call: Callable[[], Any]) -> None:
        with self._lock:
            if key in self._futures:
                return
            if self._pool is None:
                self._pool = CallPool(self.settings.concurrency)
            future = self._futures[key] = self._pool.submit(call)
        with self._progress_lock:
            self._submitted += 1
            if self._calls_since is None:
                self._calls_since = self.clock()
        future.add_done_callback(self._call_answered)

    def call(self, key: str, call: Callable[[], T]) -> T:
        self.prefetch(key, call)
        return cast(T, self._futures.pop(key).result())

    def _call_answered(self, future: Future[Any]) -> None:  # on a call's thread
        with self._progress_lock:
            self._answered += 1
            converting, self._converting = self._converting, None
        if converting is None:
            return
        models, since, still_pending = converting
        try:
            left = still_pending()
        except Exception:  # the check must never fail a call
            left = []
        with self._progress_lock:
            if left:
                self._converting = converting
            else:
                now = self.clock()
                seconds = now - since
                self._rate_since = (now, self._answered)  # the conversion's wait is not a rate
                self._converted = (
                    f"distill: the embedded server converted {', '.join(models)}; its first "
                    f"answer came {_duration(seconds)} after it started"
                )

    def progress(self) -> None:
        """Between items: the conversion's end once seen, and, at most every
        ``progress_every`` seconds while model calls run ahead of the items, how far they are."""
        notice = self.item_notice or self.notice
        if notice is None:
            return
        with self._progress_lock:
            converted, self._converted = self._converted, None
            answered, submitted, since = self._answered, self._submitted, self._calls_since
            rate_since = self._rate_since
        if converted:
            notice(converted)
        every = self.progress_every
        if every is None or since is None or answered >= submitted or not self.calls_total:
            return  # nothing running ahead (a replay answers at once)
        now = self.clock()
        if now - (self._progress_at if self._progress_at is not None else since) < every:
            return
        self._progress_at = now
        total = max(self.calls_total, submitted)
        line = f"distill: model calls {answered}/{total} items answered"
        elapsed = now - since
        rate_from, rate_base = rate_since or (since, 0)
        if answered > rate_base and now > rate_from:
            rate = (answered - rate_base) / (now - rate_from)
            left = (total - answered) / rate
            line += f", {rate:.2g} items/s, about {_duration(left)} left"
        elif not answered:
            line += f", the first still running after {_duration(elapsed)}"
        notice(line)

    # --- --distill-batch: a role's data-file calls as Batch API batches ------------------------

    def plan_batch(
        self, role: str, nodeid: str, bodies: Callable[[], Sequence[dict[str, Any]]]
    ) -> None:
        """After collection: an item of a batch role, and the chat bodies it sends (one per
        repeat), built when the role's batches are made."""
        self._batches.setdefault(role, RoleBatches(role)).plan(nodeid, bodies)

    def run_batches(self, role: str) -> None:
        """Before the first item of a batch role runs: its batches, made, followed and read."""
        if role in self._batches:
            self._batches[role].run(lambda: self.client(role), self._batch_runner(role))

    def batch_answers(self, role: str, nodeid: str) -> tuple[BatchAnswer, ...]:
        """The answers (one per repeat) the role's batch gave the item; ``BatchItemError``
        with the reason where it gave none, ``BatchPending`` where it is still running."""
        batches = self._batches.get(role)
        if batches is None:
            raise BatchItemError(f"role {role} has no batch planned for {nodeid}")
        return batches.answers(nodeid, lambda: self.client(role), self._batch_runner(role))

    def pending_batches(self) -> list[tuple[str, Finished]]:
        """(role, batch) of each batch ``--distill-no-wait`` left running this session."""
        return [(role, f) for role, b in self._batches.items() for f in b.pending]

    def _batch_state(self) -> BatchState:
        return BatchState(paths.state_file(self.settings.rootpath))

    def _batch_runner(self, role: str) -> Runner:
        endpoint, state = str(self.role(role).endpoint), self._batch_state()
        progress = self.notice or (lambda line: None)
        scope = self.batch_scope or _live_batch

        def run(client: openai.OpenAI, data: bytes, requests: list[BatchRequest]) -> Finished:
            key = input_key(endpoint, requests)
            with scope(role, key, state) as (used, replaying):
                return run_batch(
                    client,
                    data,
                    requests,
                    key=key,
                    role=role,
                    run_id=self.run_id,
                    state=used,
                    progress=progress,
                    poll_interval=0.0 if replaying else self.settings.training.poll_interval,
                    wait=not self.settings.training.no_wait,
                )

        return run

    # --- model retirement ---------------------------------------------------------------------

    def retirement_warning(self, role: str) -> str | None:
        """Once per role: a message if its model has a ``shutdown_date`` within 60 days."""
        config = self.role(role)
        if role in self._retirement_checked or not config.model:
            return None
        self._retirement_checked.add(role)
        try:
            model = self.client(role).models.retrieve(config.model)
        except Exception:  # the endpoint may not offer it; this check must never fail a test
            return None
        # Not every SDK release declares the field; an endpoint may still send it.
        raw = getattr(model, "shutdown_date", None) or (model.model_extra or {}).get(
            "shutdown_date"
        )
        shutdown = _as_date(raw)
        if shutdown is None:
            return None
        days = (shutdown - dt.datetime.now(dt.UTC).date()).days
        if days > RETIREMENT_WINDOW_DAYS:
            return None
        return (
            f"model {config.model!r} of role {role!r} shuts down on {shutdown.isoformat()} "
            f"({days} days from today); move the role to another model "
            f"(ini distill_{role}_model)"
        )

    def close(self) -> None:
        """Calls not started are cancelled and calls in flight abandoned (their answer would
        come to no item): Ctrl-C ends the session within seconds, not after the calls' timeout."""
        if self._pool is not None:
            self._pool.shutdown()
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
        if self._local is not None:
            self._local.stop()


class CallPool:
    """A fixed set of daemon threads running model calls, each answering a Future.

    ``concurrent.futures.ThreadPoolExecutor`` joins its threads at interpreter exit, so an
    interrupted session would wait for every call in flight (up to the request timeout);
    these threads are abandoned instead, and the calls not yet started are cancelled.
    """

    def __init__(self, workers: int) -> None:
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._threads = [
            threading.Thread(target=self._work, name=f"distill-call-{n}", daemon=True)
            for n in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, call: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        self._queue.put((future, call))
        return future

    def shutdown(self) -> None:
        while True:
            try:
                waiting = self._queue.get_nowait()
            except queue.Empty:
                break
            if waiting is not None:
                waiting[0].cancel()
        for _ in self._threads:
            self._queue.put(None)

    def _work(self) -> None:
        while (task := self._queue.get()) is not None:
            future, call = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)


@contextlib.contextmanager
def _live_batch(role: str, key: str, state: BatchState) -> Iterator[tuple[BatchState, bool]]:
    yield state, False


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))}s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


def _as_date(value: Any) -> dt.date | None:
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.UTC).date()
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value[:10])
        except ValueError:
            return None
    return None


def progress_every(config: pytest.Config) -> float | None:
    """Seconds between progress lines of the model calls: fewer in a log than on a terminal,
    none with ``-qq``. Asked once the terminal reporter exists (after ``pytest_configure``)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or config.get_verbosity() <= -2:
        return None
    on_terminal = reporter.isatty() and not os.environ.get("CI")
    return PROGRESS_EVERY_TTY_S if on_terminal else PROGRESS_EVERY_LOG_S


def terminal_line(config: pytest.Config, *, before_an_item: bool = False) -> Callable[[str], None]:
    """Writes one line of the plugin's own to the terminal, on a line of its own (also after
    ``-q``'s progress letters), outside any test's captured output.

    ``before_an_item``: written just before pytest reports an item, the line is left for
    pytest to end as it starts the item's line (its file name and dots, or the item's name),
    so no blank line follows it."""

    def write(line: str) -> None:
        # Looked up as each line is written: the plugin's ``pytest_configure`` (which makes
        # this writer) runs before the terminal reporter exists.
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        capture = config.pluginmanager.get_plugin("capturemanager")
        if reporter is None:
            return
        released = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
        with released:
            reporter.ensure_newline()
            if reporter._tw.width_of_current_line:  # -q: after the progress letters
                reporter._tw.line()
            if before_an_item and (reporter.showfspath or reporter.showlongtestinfo):
                reporter._tw.write(line, flush=True)  # pytest ends it: currentfspath is None
            else:
                reporter.write_line(line)

    return write
