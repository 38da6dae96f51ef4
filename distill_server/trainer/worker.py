"""The training worker: one background thread that runs queued jobs one at a time."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from distill_server.devices import release_freed_memory
from distill_server.errors import ApiError
from distill_server.imports import IMPORT_LOCK
from distill_server.models import FINAL, Registry, Resolved, fine_tuned_id, line_limit
from distill_server.store import Record, Store
from distill_shapes.preference import iter_pairs
from distill_shapes.reinforcement import iter_prompts, parse_grader
from distill_shapes.training import Example, InvalidTrainingFile, enough, iter_examples, read_lines

if TYPE_CHECKING:
    from distill_server.trainer.lora import Checkpoint, Outcome, StepMetrics

_STOP_EVERY = 256
"""Examples read between two looks at whether the job is to stop."""
_INTERRUPTED = "The server stopped while this job was validating its files. Create the job again."
_REQUEUED = (
    "The server stopped while this job was training; it is queued again and resumes from its "
    "last checkpoint (or the beginning, without one) when the server runs."
)


class JobFiles(Protocol):
    """The uploaded files a job reads and writes its results to."""

    def content(self, file_id: str) -> bytes: ...

    def add(self, filename: str, purpose: str, data: bytes) -> dict[str, Any]: ...

    def path(self, file_id: str) -> Path: ...

    def delete(self, file_id: str) -> dict[str, Any]: ...


class JobBoard(Protocol):
    """What the runner needs of the jobs it runs: their records and state machine (the
    services' ``Jobs``, which imports nothing of the trainer)."""

    @property
    def store(self) -> Store: ...

    @property
    def files(self) -> JobFiles: ...

    @property
    def registry(self) -> Registry: ...

    @property
    def queued(self) -> threading.Condition: ...

    def retrieve(self, job_id: str) -> dict[str, Any]: ...

    def next_queued(self) -> dict[str, Any] | None: ...

    def update(self, job_id: str, status: str, **changes: Any) -> dict[str, Any]: ...

    def finish(
        self,
        job_id: str,
        status: str,
        changes: Mapping[str, Any],
        *,
        message: str | None = None,
        level: str = "info",
    ) -> dict[str, Any]: ...

    def event(
        self, job_id: str, message: str, *, level: str = "info", data: dict[str, Any] | None = None
    ) -> None: ...


class Runner:
    """Runs queued jobs on a worker thread; ``stop`` interrupts the running one within a step."""

    def __init__(self, jobs: JobBoard, adapters: Path) -> None:
        self._jobs = jobs
        self._adapters = adapters
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="distill-trainer", daemon=True)

    def start(self) -> None:
        self._recover()
        self._thread.start()

    def stop(self, timeout: float = 120.0) -> None:
        self._stopping.set()
        with self._jobs.queued:
            self._jobs.queued.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        # A job still loading its model after the timeout must not stay "running" on disk.
        self._recover()

    def _recover(self) -> None:
        """Jobs a stopped or killed process left mid-flight are never left ``running``: a
        training job is queued again under the same id (so a client following it, such as
        ``pytest --distill`` after ``--distill-no-wait``, sees it finish); queued ones run."""
        for record in self._jobs.store.list("job"):
            if record.body["status"] == "running":
                self._requeue(record.id)
            elif record.body["status"] == "validating_files":
                self._fail(record.id, "server_interrupted", _INTERRUPTED)

    def _requeue(self, job_id: str) -> None:
        self._jobs.update(job_id, "queued")
        self._jobs.event(job_id, _REQUEUED, level="warn")

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._jobs.queued:
                self._jobs.queued.wait_for(
                    lambda: self._stopping.is_set() or self._jobs.next_queued() is not None,
                    timeout=1.0,
                )
            job = None if self._stopping.is_set() else self._jobs.next_queued()
            if job is not None:
                self._train(job)

    def _train(self, job: dict[str, Any]) -> None:
        job_id = job["id"]
        suffix = self._jobs.store.get("job", job_id)
        try:  # a fine-tuned starting model's id names its base, as OpenAI's do
            base_id = self._jobs.registry.start(job["model"]).base.id
        except ApiError:
            base_id = job["model"]
        model_id = fine_tuned_id(base_id, suffix.extra["suffix"] if suffix else None, job_id)
        job = self._jobs.update(job_id, "running")
        if job["status"] != "running":
            return
        self._jobs.event(job_id, "Fine-tuning job started")
        try:
            with IMPORT_LOCK:  # torch and transformers, not beside a request importing them
                import distill_server.trainer.lora  # noqa: F401
            self._fit(job, model_id)
        except InvalidTrainingFile as exc:  # found only with the model's tokenizer: too long
            self._fail(job_id, "invalid_training_file", str(exc))
        except ApiError as exc:  # the starting model was deleted since the job was created
            self._fail(job_id, "invalid_model", exc.message)
        except Exception as exc:  # any failure belongs on the job, not in a dead thread
            self._fail(job_id, "training_failed", f"Training failed: {type(exc).__name__}: {exc}")
        finally:
            # A finished job (succeeded, failed or cancelled) never resumes: no optimizer state.
            if self._jobs.retrieve(job_id)["status"] in FINAL:
                self._jobs.registry.retain(job_id, resumable=False)
            _release_memory()

    def _fit(self, job: dict[str, Any], model_id: str) -> None:
        from distill_server.trainer.lora import (
            Callbacks,
            Hyperparameters,
            Stopped,
            train_lora,
        )

        job_id = job["id"]
        stop = self._should_stop(job_id)
        validation = job["validation_file"]
        start = self._jobs.registry.start(job["model"])
        limit = line_limit(start.base.context_length())
        kind = (job.get("method") or {}).get("type", "supervised")
        try:
            if kind != "supervised":  # checked at create; read here for training
                lines = self._lines(job["training_file"], limit, stop, kind)
                done = self._fit_method(job, model_id, kind, lines, start, stop)
                if done is not None:
                    self._succeed(job, model_id, start.base.id, *done)
                return
            examples = self._examples(job["training_file"], limit, stop)
            valid = self._examples(validation, limit, stop) if validation else []
        except Stopped:
            self._stopped(job_id, 0)
            return
        hp = Hyperparameters(seed=job["seed"], **job["hyperparameters"])
        resume = self._resume_point(job_id)
        metrics = self._metrics_until(job_id, resume[0]) if resume else []
        if resume:
            self._jobs.event(job_id, f"Resuming from the checkpoint at step {resume[0]}")
        callbacks = Callbacks(
            on_step=lambda m: self._on_step(job_id, m, metrics),
            on_checkpoint=lambda c: self._on_checkpoint(job_id, model_id, c),
            stop=stop,
        )
        out_dir = self._adapters / job_id
        path = resume[1] if resume else None
        outcome = train_lora(
            start.base, examples, valid, hp, out_dir, callbacks, resume=path, start=start.adapter
        )
        self._succeed(job, model_id, start.base.id, outcome, metrics)

    def _fit_method(
        self,
        job: dict[str, Any],
        model_id: str,
        kind: str,
        lines: list[Any],
        start: Resolved,
        stop: Callable[[], bool],
    ) -> tuple[Outcome, list[StepMetrics]] | None:
        """A DPO or RL job trained (``methods.py``), with its steps' metrics; None when it
        failed."""
        from distill_server.trainer.lora import Callbacks
        from distill_server.trainer.methods import (
            MethodHyperparameters,
            NoUsablePrompts,
            samples_per_prompt,
            train_dpo,
            train_rl,
        )

        job_id = job["id"]
        method = job["method"][kind]
        given = method["hyperparameters"]
        hp = MethodHyperparameters(
            n_epochs=given["n_epochs"],
            batch_size=given["batch_size"],
            learning_rate_multiplier=given["learning_rate_multiplier"],
            seed=job["seed"],
            beta=given.get("beta", 0.1),
            samples=samples_per_prompt(given.get("compute_multiplier", 1.0)),
        )
        resume = self._resume_point(job_id)
        metrics = self._metrics_until(job_id, resume[0]) if resume else []
        if resume:
            self._jobs.event(job_id, f"Resuming from the checkpoint at step {resume[0]}")
        callbacks = Callbacks(
            on_step=lambda m: self._on_step(job_id, m, metrics),
            on_checkpoint=lambda c: self._on_checkpoint(job_id, model_id, c),
            stop=stop,
        )
        out_dir, path = self._adapters / job_id, resume[1] if resume else None
        if kind == "dpo":
            outcome = train_dpo(start.base, start.adapter, lines, hp, out_dir, callbacks, path)
        else:
            grader = parse_grader(method["grader"])

            def used(n: int, of: int) -> None:
                self._jobs.event(
                    job_id,
                    f"Training on {n} of {of} prompts: those whose pass rate under the "
                    f"starting model ({hp.samples} samples each) is strictly between 0 and 1",
                    data=None,
                )

            try:
                outcome = train_rl(
                    start.base, start.adapter, lines, grader, hp, out_dir, callbacks, path, used
                )
            except NoUsablePrompts as exc:
                self._fail(job_id, "no_usable_prompts", f"Reinforcement fine-tuning: {exc}")
                return None
        return outcome, metrics

    def _succeed(
        self,
        job: dict[str, Any],
        model_id: str,
        base_id: str,
        outcome: Outcome,
        metrics: list[StepMetrics],
    ) -> None:
        job_id, files = job["id"], self._jobs.files
        stop = self._should_stop(job_id)
        if outcome.adapter is None:
            self._stopped(job_id, outcome.steps)
            return
        if stop():  # cancelled (or the server stopping) while the final adapter was saved
            shutil.rmtree(outcome.adapter, ignore_errors=True)
            self._stopped(job_id, outcome.steps)
            return
        self._jobs.registry.register(model_id, base_id, outcome.adapter)
        results = files.add("step_metrics.csv", "fine-tune-results", _csv(metrics))
        self._jobs.event(job_id, f"New fine-tuned model created: {model_id}")
        changes = {
            "fine_tuned_model": model_id,
            "trained_tokens": outcome.trained_tokens,
            "result_files": [results["id"]],
        }
        body = self._jobs.finish(
            job_id, "succeeded", changes, message="The job has successfully completed"
        )
        if body["status"] != "succeeded":  # a cancel landed since the look above
            self._jobs.registry.delete(model_id)
            files.delete(results["id"])

    def _stopped(self, job_id: str, steps: int) -> None:
        self._jobs.event(job_id, f"Training stopped after step {steps}")
        if self._stopping.is_set():
            self._requeue(job_id)

    def _examples(self, file_id: str, limit: int, stop: Callable[[], bool]) -> list[Example]:
        """A chat training file's examples."""
        return self._read(file_id, limit, stop, iter_examples)

    def _lines(self, file_id: str, limit: int, stop: Callable[[], bool], kind: str) -> list[Any]:
        """A DPO file's pairs or an RL file's prompts."""
        return self._read(file_id, limit, stop, iter_pairs if kind == "dpo" else iter_prompts)

    def _read(
        self,
        file_id: str,
        limit: int,
        stop: Callable[[], bool],
        reader: Callable[[Iterator[bytes]], Iterator[Any]],
    ) -> list[Any]:
        """A training file's lines as ``reader`` parses them, read line by line; ``Stopped``
        when asked to stop."""
        from distill_server.trainer.lora import Stopped

        try:
            path = self._jobs.files.path(file_id)
        except ApiError:
            raise InvalidTrainingFile(
                None, f"the file {file_id!r} was deleted before the job started."
            ) from None
        with path.open("rb") as stream:
            lines: list[Any] = []
            for line in reader(read_lines(stream, limit)):
                if len(lines) % _STOP_EVERY == 0 and stop():
                    raise Stopped
                lines.append(line)
        enough(len(lines))
        return lines

    def _resume_point(self, job_id: str) -> tuple[int, Path] | None:
        """The step and folder of the job's last checkpoint that can be resumed from."""
        from distill_server.trainer.checkpoints import resumable

        steps = [r.body["step_number"] for r in self._jobs.store.list("checkpoint", job_id)]
        for step in sorted(steps, reverse=True):
            # Found under this data dir, not at the path stored: the dir may have moved.
            path = self._adapters / job_id / f"step-{step}"
            if resumable(path):
                return step, path
        return None

    def _metrics_until(self, job_id: str, step: int) -> list[StepMetrics]:
        """The metrics a resumed job logged up to ``step``, for its results file."""
        from distill_server.trainer.lora import StepMetrics

        by_step: dict[int, StepMetrics] = {}
        known = set(StepMetrics.__dataclass_fields__) - {"extra"}
        for record in self._jobs.store.list("event", job_id):
            data = record.body.get("data") or {}
            if record.body.get("type") == "metrics" and data.get("step", step + 1) <= step:
                extra = {k: v for k, v in data.items() if k not in known}
                fields = {k: v for k, v in data.items() if k in known}
                by_step[data["step"]] = StepMetrics(**fields, extra=extra)
        return [by_step[k] for k in sorted(by_step)]

    def _should_stop(self, job_id: str) -> Callable[[], bool]:
        def stop() -> bool:
            return self._stopping.is_set() or self._jobs.retrieve(job_id)["status"] != "running"

        return stop

    def _on_step(self, job_id: str, m: StepMetrics, seen: list[StepMetrics]) -> None:
        seen.append(m)
        data = {
            "step": m.step,
            "total_steps": m.total_steps,
            "train_loss": m.train_loss,
            "train_mean_token_accuracy": m.train_mean_token_accuracy,
            "trained_tokens": m.trained_tokens,
            "step_seconds": m.step_seconds,
            **m.extra,
        }
        message = f"Step {m.step}/{m.total_steps}: training loss={m.train_loss:.4f}"
        message += "".join(f", {key}={value:.4f}" for key, value in m.extra.items())
        self._jobs.event(job_id, message, data=data)

    def _on_checkpoint(self, job_id: str, model_id: str, c: Checkpoint) -> None:
        checkpoint_id = f"ftckpt-{job_id[-8:]}-{c.step}"
        body = {
            "object": "fine_tuning.job.checkpoint",
            "id": checkpoint_id,
            "created_at": int(time.time()),
            "fine_tuned_model_checkpoint": f"{model_id}:ckpt-step-{c.step}",
            "fine_tuning_job_id": job_id,
            "step_number": c.step,
            "metrics": c.metrics,
        }
        record = Record("checkpoint", checkpoint_id, body, {"adapter": str(c.path)})
        self._jobs.store.put(record, parent=job_id)
        self._jobs.registry.retain(job_id, resumable=True)
        self._jobs.event(job_id, f"Checkpoint created at step {c.step}")

    def _fail(self, job_id: str, code: str, message: str) -> None:
        error = {"code": code, "message": message, "param": None}
        self._jobs.finish(job_id, "failed", {"error": error}, level="error")


def _csv(metrics: list[StepMetrics]) -> bytes:
    """The results file: a row a step; a method's own metrics (DPO's reward margin, RL's
    reward) as further columns."""
    extra = sorted({key for m in metrics for key in m.extra})
    lines = [",".join(["step", "train_loss", "train_accuracy", *extra])]
    for m in metrics:
        row = [str(m.step), f"{m.train_loss:.6f}", f"{m.train_mean_token_accuracy:.6f}"]
        lines.append(",".join(row + [f"{m.extra.get(key, 0.0):.6f}" for key in extra]))
    return ("\n".join(lines) + "\n").encode()


def _release_memory() -> None:
    """Give back what a job's model and optimizer held: their modules refer to each other, so
    only a collection frees them (Python's oldest generation is rarely collected on its own);
    then the GPU allocator's cache, and the C allocator's free pages (glibc keeps the freed
    memory of the trainer thread's arena otherwise: a server grew 1.3 GB over a few jobs)."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    release_freed_memory()
