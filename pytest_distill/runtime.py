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
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pytest

from pytest_distill import paths
from pytest_distill.options import Settings
from pytest_distill.roles import LOCAL_API_KEY_ENV, Endpoint, RoleConfig, make_openai

if TYPE_CHECKING:
    import openai

T = TypeVar("T")
RUNTIME_KEY = pytest.StashKey["Runtime"]()
RETIREMENT_WINDOW_DAYS = 60
LOCAL_PLACEHOLDER = "http://local.invalid/v1"  # the embedded server's URL while replaying


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
    transport: Callable[[], Any] | None = None  # the cassettes' transport (set by recording)
    notice: Callable[[str], None] | None = None  # a line of the plugin's own on the terminal
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    _clients: dict[str, openai.OpenAI] = field(default_factory=dict)
    _local: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pool: CallPool | None = None
    _futures: dict[str, Future[Any]] = field(default_factory=dict)
    _retirement_checked: set[str] = field(default_factory=set)

    def role(self, name: str) -> RoleConfig:
        return self.settings.role_configs[name]

    def client(self, role: str) -> openai.OpenAI:
        """The SDK client of a role, made once and shared between threads."""
        return self.client_for(self.role(role))

    def client_for(self, config: RoleConfig) -> openai.OpenAI:
        with self._lock:
            if config.name not in self._clients:
                self._clients[config.name] = make_openai(
                    config,
                    local_url=self._local_url,
                    timeout=self.settings.timeout,
                    max_retries=self.settings.max_retries,
                    transport=self.transport() if self.transport is not None else None,
                )
            return self._clients[config.name]

    def use_finetuned(self, model: str, endpoint: Endpoint, key_env: str | None = None) -> None:
        """After training: the fine-tuned model becomes the ``finetuned`` role; it is served
        where it trained, so it takes the trainer's key variable unless it names its own."""
        configs = dict(self.settings.role_configs)
        own = configs["finetuned"].api_key_env
        configs["finetuned"] = dataclasses.replace(
            configs["finetuned"], model=model, endpoint=endpoint, api_key_env=own or key_env
        )
        self.settings = dataclasses.replace(self.settings, role_configs=configs)
        with self._lock:
            stale = self._clients.pop("finetuned", None)
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
            for model_id in pending_conversions(data_dir, models) if self.notice else ():
                notice(
                    f"distill: the embedded server converts {model_id} from GGUF once (about "
                    "half a minute on 2 cores; later runs load the converted copy); the first "
                    "model call waits for it"
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

    def prefetch(self, key: str, call: Callable[[], Any]) -> None:
        with self._lock:
            if key in self._futures:
                return
            if self._pool is None:
                self._pool = CallPool(self.settings.concurrency)
            self._futures[key] = self._pool.submit(call)

    def call(self, key: str, call: Callable[[], T]) -> T:
        self.prefetch(key, call)
        return cast(T, self._futures.pop(key).result())

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


def _as_date(value: Any) -> dt.date | None:
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.UTC).date()
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value[:10])
        except ValueError:
            return None
    return None


def terminal_line(config: pytest.Config) -> Callable[[str], None]:
    """Writes one line of the plugin's own to the terminal, on a line of its own (also after
    ``-q``'s progress letters), outside any test's captured output."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")

    def write(line: str) -> None:
        if reporter is None:
            return
        released = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
        with released:
            reporter.ensure_newline()
            if reporter._tw.width_of_current_line:  # -q: after the progress letters
                reporter._tw.line()
            reporter.write_line(line)

    return write
