"""One owner per data directory: a cross-process lock, the owner's address next to it, and
the processes that use the owner's server instead of starting their own.

The owner holds ``server.lock`` (an OS file lock, released by the kernel when the process dies,
however it dies) and writes ``server.json`` with its PID and address. A second server on the
directory is refused, naming them; a pytest process reads them and uses that server. Each such
user holds a lock of its own under ``clients/``, so an owner that is itself a pytest session
can wait, when its own work is done, until no other process still needs the model.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from distill_server.private import private_dir

LOCK = "server.lock"
OWNER = "server.json"
CLIENTS = "clients"


@dataclass(frozen=True, slots=True)
class Owner:
    """The process serving a data directory, as written next to its lock."""

    pid: int
    base_url: str


class DataDirBusy(RuntimeError):
    """Another process owns the data directory."""

    def __init__(self, data_dir: Path, owner: Owner | None) -> None:
        who = (
            f"process {owner.pid}, serving on {owner.base_url}"
            if owner
            else "another process (starting up; its address is not written yet)"
        )
        super().__init__(
            f"{data_dir} is in use by {who}; use that server, stop it, or give another --data-dir."
        )
        self.owner = owner


class Ownership:
    """The lock on one data directory, taken by the process that serves it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        private_dir(data_dir)  # the server's own: other users read nothing in it
        # Not thread-local: a server may be started on one thread and stopped on another.
        self._lock = FileLock(data_dir / LOCK, thread_local=False)

    def acquire(self) -> None:
        """Take the directory, or raise ``DataDirBusy`` naming who has it."""
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise DataDirBusy(self.data_dir, read_owner(self.data_dir)) from None

    def publish(self, owner: Owner) -> None:
        target = self.data_dir / OWNER
        partial = target.with_name(f"{OWNER}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(asdict(owner)))
        os.replace(partial, target)

    def release(self) -> None:
        (self.data_dir / OWNER).unlink(missing_ok=True)
        self._lock.release()

    def wait_for_clients(self, timeout: float) -> int:
        """Wait until no other process uses this server (at most ``timeout`` seconds);
        returns how many still did when the wait ended."""
        deadline = time.monotonic() + timeout
        while (alive := live_clients(self.data_dir)) and time.monotonic() < deadline:
            time.sleep(0.5)
        return alive


def read_owner(data_dir: Path, wait: float = 0.0) -> Owner | None:
    """The owner's record; ``wait`` seconds for an owner still starting to write it."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fields = json.loads((data_dir / OWNER).read_text())
            return Owner(int(fields["pid"]), str(fields["base_url"]))
        except (OSError, ValueError, KeyError, TypeError):
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)


class Attachment:
    """This process uses the owner's server: held for as long as it does."""

    def __init__(self, data_dir: Path) -> None:
        folder = data_dir / CLIENTS
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.lock"
        self._lock = FileLock(self.path, thread_local=False)
        self._lock.acquire(timeout=0)

    def release(self) -> None:
        self._lock.release()
        self.path.unlink(missing_ok=True)


def live_clients(data_dir: Path) -> int:
    """How many processes hold an attachment; those of dead processes are removed."""
    alive = 0
    for path in sorted((data_dir / CLIENTS).glob("*.lock")):
        probe = FileLock(path, thread_local=False)
        try:
            probe.acquire(timeout=0)
        except Timeout:
            alive += 1
            continue
        probe.release()
        path.unlink(missing_ok=True)
    return alive
