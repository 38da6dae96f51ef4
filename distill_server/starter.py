"""The embedded server as pytest processes share it: one model in memory per data directory.

The first process to need the server on a data directory starts it as a child process (the
``distill-server`` command on a free loopback port) and owns it; every other one (xdist
workers, a second pytest session, or a ``distill-server`` already running there) uses the
owner's. In its own process the server's model, threads and memory are its own: torch's thread
count, the interpreter's lock and the allocator of the pytest process running the user's tests
are not shared with decoding and training. The child dies with its parent, even one killed
with SIGKILL; its output goes to ``server.log`` in the data directory. An owner, done with its
own tests, waits for the other processes using the server before it stops it.

This module is the plugin's only way into the server package (``lint-imports`` checks it):
``shared_server`` starts or joins the server, ``pending_conversions`` names the models it will
convert first, and the errors are the ones a session may meet.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from filelock import FileLock, Timeout

from distill_server.models import DEFAULT_MODEL_ID, ModelUnavailable, pending_conversions
from distill_server.owner import LOCK, Attachment, DataDirBusy, Owner, live_clients, read_owner
from distill_server.server import API_KEY_ENV, LocalServer

__all__ = [
    "DEFAULT_MODEL_ID",
    "DataDirBusy",
    "ModelUnavailable",
    "ModelsNotServed",
    "ServerUnusable",
    "SharedServer",
    "pending_conversions",
    "shared_server",
]

_OWNER_WAIT_S = 30.0
_CLIENTS_WAIT_S = 3600.0
_START_WAIT_S = 120.0
_STOP_WAIT_S = 15.0
_ATTEMPTS = 3
LOG = "server.log"


class ServerUnusable(RuntimeError):
    """The data directory's owner does not answer, or refuses this process's key."""


class ModelsNotServed(ServerUnusable):
    """The data directory's owner answers but does not serve a model this process needs."""


class SharedServer:
    """This process's way to the data directory's server: its own child, or another's."""

    def __init__(
        self,
        base_url: str,
        child: subprocess.Popen[bytes] | None,
        attachment: Attachment | None,
        data_dir: Path,
    ) -> None:
        self.base_url = base_url
        self.owned = child is not None
        self.pid = child.pid if child is not None else None
        self._child = child
        self._attachment = attachment
        self._data_dir = data_dir

    def stop(self) -> None:
        """Stop using it: an owner waits for the other processes using it, then stops it (as
        Ctrl-C stops ``distill-server``: requests still decoding get a 503)."""
        if self._attachment is not None:
            self._attachment.release()
        child, self._child = self._child, None
        if child is None:
            return
        deadline = time.monotonic() + _CLIENTS_WAIT_S
        while child.poll() is None and live_clients(self._data_dir):
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)
        try:
            child.wait(_STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def shared_server(
    data_dir: Path,
    models: Mapping[str, str | Path] | None,
    api_key: str | None,
    device: str = "auto",
) -> SharedServer:
    """Start the server on ``data_dir`` in a child process, or use the one that already
    serves it (on whichever ``device`` that one chose)."""
    # Checked here, before any process starts: the models exist (``ModelUnavailable``), the key
    # is usable; the data directory is made, private.
    data_dir = LocalServer(data_dir, models, api_key=api_key, device=device).data_dir  # type: ignore[arg-type]
    error: Exception | None = None
    for _ in range(_ATTEMPTS):
        owner = None
        if not _owned(data_dir):
            try:
                return _start_child(data_dir, models, api_key, device)
            except DataDirBusy as busy:  # another process took it meanwhile: use theirs
                owner = busy.owner
        owner = owner or read_owner(data_dir, wait=_OWNER_WAIT_S)
        if owner is None:
            error = ServerUnusable(f"{data_dir} is locked by a server that wrote no address")
            continue
        attachment = Attachment(data_dir)
        try:
            _check(owner, api_key, _wanted(models))
        except ModelsNotServed:
            attachment.release()
            raise
        except ServerUnusable as exc:  # the owner may be stopping: try to take over
            attachment.release()
            error = exc
            time.sleep(0.5)
            continue
        return SharedServer(owner.base_url, None, attachment, data_dir)
    assert error is not None
    raise error


def _owned(data_dir: Path) -> bool:
    """Whether a process holds the data directory's lock now."""
    lock = FileLock(data_dir / LOCK, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def _start_child(
    data_dir: Path, models: Mapping[str, str | Path] | None, api_key: str | None, device: str
) -> SharedServer:
    command = [sys.executable, "-m", "distill_server", "--data-dir", str(data_dir)]
    command += ["--port", "0", "--device", device, "--parent-pid", str(os.getpid())]
    for model_id, path in (models or {}).items():
        command += ["--model", f"{model_id}={path}"]
    env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    # glibc gives each thread that allocates an arena of its own (up to 8 per core), and memory
    # freed in one is not reused by another: the batcher's, the trainer's and the request
    # threads' would each keep what they once held. Two arenas, as for a process this size.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    # Blocks of 4 MB and more (a batch's keys and values, a layer at a time) mapped and unmapped
    # on their own: glibc's default threshold rises to 32 MB as such blocks are freed, and the
    # heap they then come from keeps what they freed (0.2 GB less at the peak of 120 calls with
    # few-shot prompts, in about the same time).
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(4 * 2**20))
    if api_key:
        env[API_KEY_ENV] = api_key  # never on the command line, which other users can read
    log = data_dir / LOG
    descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    start = os.lseek(descriptor, 0, os.SEEK_END)
    try:
        child = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=descriptor,
            stderr=descriptor,
            env=env,
            start_new_session=True,  # Ctrl-C reaches pytest, which stops the server in order
        )
    finally:
        os.close(descriptor)
    deadline = time.monotonic() + _START_WAIT_S
    while True:
        owner = read_owner(data_dir)
        if owner is not None and owner.pid == child.pid:
            return SharedServer(owner.base_url, child, None, data_dir)
        if child.poll() is not None:
            why = _last_line(log, start) or f"exit code {child.returncode}"
            if " is in use by " in why:
                raise DataDirBusy(data_dir, read_owner(data_dir))
            raise ServerUnusable(f"the embedded server did not start: {why} (log: {log})")
        if time.monotonic() > deadline:
            child.kill()
            child.wait()
            raise ServerUnusable(
                f"the embedded server did not start within {_START_WAIT_S:.0f} s (log: {log})"
            )
        time.sleep(0.05)


def _last_line(log: Path, start: int) -> str:
    try:
        with open(log, "rb") as written:
            written.seek(start)
            lines = written.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    text = [line.strip() for line in lines if line.strip()]
    return text[-1].removeprefix("distill-server: ") if text else ""


def _wanted(models: Mapping[str, str | Path] | None) -> list[str]:
    if models is None:
        return [DEFAULT_MODEL_ID]
    return list(models)


def _check(owner: Owner, api_key: str | None, wanted: list[str]) -> None:
    """The owner answers with this process's key and serves every model it needs."""
    request = urllib.request.Request(f"{owner.base_url}/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            served = {model["id"] for model in json.load(response)["data"]}
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response's socket
        if exc.code == 401:
            raise ServerUnusable(
                f"The embedded server of this data directory (process {owner.pid}, "
                f"{owner.base_url}) needs an API key; set {API_KEY_ENV} to the key it was "
                "started with."
            ) from None
        raise ServerUnusable(f"{owner.base_url} answered {exc.code} to GET /models.") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ServerUnusable(
            f"Process {owner.pid} owns this data directory but its server at {owner.base_url} "
            f"does not answer ({exc}); stop that process or use another data directory."
        ) from None
    missing = [model for model in wanted if model not in served]
    if missing:
        names = ", ".join(repr(m) for m in missing)
        raise ModelsNotServed(
            f"The embedded server of this data directory (process {owner.pid}, "
            f"{owner.base_url}) does not serve {names}, which this session's "
            "distill_local_models asks for; it serves "
            f"{', '.join(repr(m) for m in sorted(served)) or 'no model'}. Stop that server, "
            "or start it with the same models."
        )
