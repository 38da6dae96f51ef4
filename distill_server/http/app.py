"""The server's components, built over one data directory."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from distill_server.models import KEEP_CHECKPOINTS, ModelSource, Registry
from distill_server.services.batch_runner import BatchRunner
from distill_server.services.batches import Batches
from distill_server.services.chat import Chat, Serving
from distill_server.services.files import PARTIAL, Files
from distill_server.services.jobs import Jobs
from distill_server.store import Store
from distill_server.trainer.worker import Runner

log = logging.getLogger("distill_server")


@dataclass(frozen=True, slots=True)
class App:
    """Every component of a running server, built over one data directory."""

    store: Store
    registry: Registry
    files: Files
    jobs: Jobs
    runner: Runner
    chat: Chat
    serving: Serving
    batches: Batches
    batch_runner: BatchRunner

    @classmethod
    def open(
        cls,
        data_dir: Path,
        bases: dict[str, ModelSource],
        keep_checkpoints: int = KEEP_CHECKPOINTS,
    ) -> App:
        """The components over ``data_dir`` (absolute), which this process owns: debris of a
        killed process is removed and stored paths are made relative before anything runs.
        ``keep_checkpoints``: how many of each job's last checkpoints keep their files."""
        remove_debris(data_dir)
        cache = data_dir / "converted"
        bases = {name: replace(source, cache=cache) for name, source in bases.items()}
        store = Store(data_dir / "state.sqlite3")
        registry = Registry(store, bases, data_dir, keep_checkpoints)
        if moved := registry.migrate():
            log.info("%d stored adapter paths made relative to %s", moved, data_dir)
        files = Files(store, data_dir / "files")
        jobs = Jobs(store, files, registry)
        serving = Serving()
        runner = Runner(jobs, data_dir / "adapters")
        chat = Chat(store, registry, serving)
        batches = Batches(store, files, data_dir / "batches")
        batch_runner = BatchRunner(batches, chat, registry)
        return cls(store, registry, files, jobs, runner, chat, serving, batches, batch_runner)

    def start(self) -> None:
        """Start the background work: queued fine-tuning jobs, and batches."""
        self.runner.start()
        self.batch_runner.start()

    def close(self) -> None:
        self.batch_runner.stop()
        self.runner.stop()
        self.serving.close()
        self.store.close()


def remove_debris(data_dir: Path) -> list[Path]:
    """Partial uploads and model conversions a killed process left behind; only the owner of
    ``data_dir`` calls this, so nothing removed is being written."""
    found = [
        *data_dir.glob(f"files/*{PARTIAL}*"),
        *data_dir.glob(f"converted/*{PARTIAL}*"),
        *data_dir.glob("adapters/*/*.partial"),  # a checkpoint being saved
    ]
    for path in found:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if found:
        log.info("removed %d partial files left by a stopped server", len(found))
    return found
