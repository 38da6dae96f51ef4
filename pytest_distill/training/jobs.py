"""Upload, create or resume, and follow a fine-tuning job through the fine-tuning API.

The same code drives OpenAI and the embedded local server. Idempotent: a job is keyed by the
training set's content hash, the base model, the trainer endpoint and the hyperparameters;
the key is kept in ``.distill/state.json`` and in the job's metadata, so a retried CI run
finds its job instead of starting another. A job past SFT (``method`` dpo or reinforcement,
written by ``distill_shapes.methods.method_json``) has the method in its key too; its base
model is the first stage's fine-tuned model, so each stage has a key of its own.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pytest_distill.options import TrainingSettings
from pytest_distill.roles import may_have_created
from pytest_distill.text import shorten
from pytest_distill.training.state import State

if TYPE_CHECKING:
    import openai

FINAL = frozenset({"succeeded", "failed", "cancelled"})
Progress = Callable[[str], None]


class DistillError(RuntimeError):
    """The distill step failed; the message is one line saying why and what to do."""


class Dataset(Protocol):
    """A written training file: a chat, preference or prompt JSONL."""

    @property
    def path(self) -> Path: ...

    @property
    def sha256(self) -> str: ...


def job_key(
    settings: TrainingSettings, dataset: Dataset, method: Mapping[str, Any] | None = None
) -> str:
    """The job's idempotency key: the training set, base model, trainer and what shapes the job
    (``method``: a method past SFT, part of the key only then)."""
    parts: list[Any] = [
        dataset.sha256,
        settings.base_model,
        settings.trainer,
        dict(settings.hyperparameters),
        settings.suffix,
        settings.seed,
    ]
    if settings.extra_body:  # only when set, so that keys made before it existed stay valid
        parts.append(dict(settings.extra_body))
    if method is not None:
        parts.append(dict(method))
    material = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class Outcome:
    job_id: str
    file_id: str
    status: str
    model: str | None
    reused: bool
    # The job's metrics events seen while following it, by step: the loss curve. Empty when
    # the job was already final (or is not followed): no extra request is made for them.
    metrics: tuple[dict[str, Any], ...] = ()


def train(
    client: openai.OpenAI,
    dataset: Dataset,
    settings: TrainingSettings,
    state: State,
    progress: Progress,
    *,
    replaying: bool = False,
    method: Mapping[str, Any] | None = None,
) -> Outcome:
    """Find or start the job for this dataset and settings, then follow it unless no_wait.
    ``replaying``: the job's polls come from cassettes, so its step lines are counted, not
    printed again one by one. ``method``: the job's ``method`` past SFT (None: supervised,
    with the settings' hyperparameters)."""
    key = job_key(settings, dataset, method)
    try:
        job, file_id, reused = _find_or_start(
            client, dataset, settings, state, key, progress, method
        )
        if settings.no_wait or job.status in FINAL:
            return _outcome(job, file_id, reused)
        metrics: dict[int, dict[str, Any]] = {}
        job = follow(client, job.id, settings, progress, metrics, replaying=replaying)
        return _outcome(job, file_id, reused, tuple(metrics[s] for s in sorted(metrics)))
    except DistillError:
        raise
    except Exception as exc:
        raise DistillError(_explain(exc, settings.trainer)) from None


def _find_or_start(
    client: openai.OpenAI,
    dataset: Dataset,
    settings: TrainingSettings,
    state: State,
    key: str,
    progress: Progress,
    method: Mapping[str, Any] | None = None,
) -> tuple[Any, str, bool]:
    import openai

    known = state.job(key)
    if known.get("job_id"):
        try:
            job = client.fine_tuning.jobs.retrieve(known["job_id"])
        except openai.NotFoundError:
            # The trainer lost its data (a deleted .distill/server, another trainer at the
            # same name): the job and its upload are gone, so start over.
            progress(f"distill: the trainer no longer knows job {known['job_id']}; starting over")
            state.save_job(key, job_id=None, file_id=None)
            known = {}
        else:
            if job.status not in ("failed", "cancelled"):
                progress(f"distill: resuming job {job.id} ({job.status})")
                return job, known["file_id"], True
    job = _listed_job(client, key)
    if job is not None:
        state.save_job(key, job_id=job.id, file_id=job.training_file)
        progress(f"distill: found job {job.id} ({job.status}) for this training set")
        return job, job.training_file, True
    file_id = known.get("file_id") or _upload(client, dataset, progress)
    state.save_job(key, file_id=file_id, job_id=None)
    job = _create(client, settings, key, file_id, dataset, method)
    state.save_job(key, job_id=job.id, file_id=file_id)
    progress(f"distill: started job {job.id} on {settings.trainer} for {settings.base_model}")
    return job, file_id, False


def _listed_job(client: openai.OpenAI, key: str) -> Any:
    # .data: the first page only; iterating the page object would fetch every page.
    for job in client.fine_tuning.jobs.list(metadata={"distill_key": key}, limit=20).data:
        if (
            job.status not in ("failed", "cancelled")
            and (job.metadata or {}).get("distill_key") == key
        ):
            return job
    return None


def _upload(client: openai.OpenAI, dataset: Dataset, progress: Progress) -> str:
    name = f"distill-{dataset.sha256[:12]}.jsonl"
    uploaded = client.files.create(file=(name, dataset.path.read_bytes()), purpose="fine-tune")
    progress(f"distill: uploaded the training file as {uploaded.id} ({name})")
    return uploaded.id


def _create(
    client: openai.OpenAI,
    settings: TrainingSettings,
    key: str,
    file_id: str,
    dataset: Dataset,
    method: Mapping[str, Any] | None = None,
) -> Any:
    """Create without SDK retries: a POST that timed out or got a 5xx may have created the job
    after all, so we look it up by its metadata before trying again (the SDK's idempotency key
    is not sent)."""
    once = client.with_options(max_retries=0)
    body: dict[str, Any] = {
        "model": settings.base_model,
        "training_file": file_id,
        "method": dict(method)
        if method is not None
        else {
            "type": "supervised",
            "supervised": {"hyperparameters": dict(settings.hyperparameters)},
        },
        "suffix": settings.suffix,
        "metadata": {"distill_key": key, "distill_data_sha256": dataset.sha256},
    }
    if settings.seed is not None:
        body["seed"] = settings.seed
    merged = merge_body(body, settings.extra_body)
    known = {k: v for k, v in merged.items() if k in _CREATE_PARAMS}
    extra = {k: v for k, v in merged.items() if k not in _CREATE_PARAMS}
    for attempt in range(3):
        try:
            return once.fine_tuning.jobs.create(**known, extra_body=extra or None)
        except Exception as exc:
            if not may_have_created(exc):
                raise
            found = _listed_job(client, key)
            if found is not None:
                return found
            if attempt == 2:
                raise
            time.sleep(2**attempt)
    raise AssertionError("unreachable")


_CREATE_PARAMS = frozenset(
    {
        "model",
        "training_file",
        "hyperparameters",
        "integrations",
        "metadata",
        "method",
        "seed",
        "suffix",
        "validation_file",
    }
)


def merge_body(body: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` with ``extra`` merged in: objects merge key by key, anything else replaces."""
    merged = dict(body)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_body(merged[key], value)
        else:
            merged[key] = value
    return merged


def follow(
    client: openai.OpenAI,
    job_id: str,
    settings: TrainingSettings,
    progress: Progress,
    metrics: dict[int, dict[str, Any]] | None = None,
    *,
    replaying: bool = False,
) -> Any:
    """Poll the job and its events until it is final; an unknown status counts as running.
    Each metrics event seen is kept in ``metrics`` by its step. Replaying, only the first and
    the final line are shown, with the number of step lines between them."""
    started = time.monotonic()
    last_state, last_shown = "", 0.0
    replayed = 0
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        events = client.fine_tuning.jobs.list_events(job_id, limit=20).data  # newest first
        if metrics is not None:
            metrics.update(_metric_points(events))
        elapsed = time.monotonic() - started
        state = _progress_line(job, events)
        # A line when the state or step changes, else a heartbeat every 30 s.
        if replaying and last_state and job.status not in FINAL:
            replayed += state != last_state
            last_state = state
        elif state != last_state or elapsed - last_shown >= 30:
            if replayed:
                progress(f"distill: {replayed} recorded progress lines of job {job_id} replayed")
                replayed = 0
            progress(f"{state}, {elapsed:.0f}s elapsed")
            last_state, last_shown = state, elapsed
        if job.status in FINAL:
            return _final(job, events)
        if time.monotonic() - started > settings.job_timeout:
            raise DistillError(
                f"distill: job {job_id} still {job.status} after {settings.job_timeout:.0f} s; run "
                "pytest --distill again to keep following it (ini distill_job_timeout)"
            )
        if settings.poll_interval > 0:  # a replay polls at once
            time.sleep(settings.poll_interval)


def _progress_line(job: Any, events: list[Any]) -> str:
    parts = [f"distill: job {job.id} {job.status}"]
    metrics = next((e.data for e in events if isinstance(e.data, dict) and "step" in e.data), None)
    if metrics:
        total = metrics.get("total_steps")
        parts.append(f"step {metrics['step']}" + (f"/{total}" if total else ""))
        loss = metrics.get("train_loss", metrics.get("loss"))
        if isinstance(loss, (int, float)):
            parts.append(f"loss {loss:.4f}")
    return ", ".join(parts)


def _metric_points(events: list[Any]) -> dict[int, dict[str, Any]]:
    points = {}
    for event in events:
        data = event.data if isinstance(event.data, dict) else {}
        step = data.get("step")
        if isinstance(step, int) and not isinstance(step, bool):
            points[step] = {k: v for k, v in data.items() if isinstance(v, (int, float, str))}
    return points


def _final(job: Any, events: list[Any]) -> Any:
    if job.status == "succeeded":
        return job
    error = getattr(job, "error", None)
    why = shorten(getattr(error, "message", None) or "no error given", 300)
    last = shorten("; ".join(e.message for e in events[:3] if getattr(e, "message", None)), 300)
    raise DistillError(
        f"distill: fine-tuning job {job.id} {job.status}: {why}"
        + (f" (last events: {last})" if last else "")
    )


def _outcome(
    job: Any, file_id: str, reused: bool, metrics: tuple[dict[str, Any], ...] = ()
) -> Outcome:
    return Outcome(job.id, file_id, job.status, job.fine_tuned_model, reused, metrics)


def _explain(exc: Exception, trainer: str) -> str:
    from pytest_distill.roles import describe_error

    name = type(exc).__name__
    if getattr(exc, "code", None) == "insufficient_quota":
        return (
            f"distill: the trainer endpoint {trainer} refused for insufficient quota, a billing "
            f"problem rather than a rate limit: {describe_error(exc)}"
        )
    if name in ("APIConnectionError", "APITimeoutError"):
        return (
            f"distill: the trainer endpoint {trainer} is unreachable ({describe_error(exc)}); "
            "start it, or set ini distill_trainer_endpoint"
        )
    return f"distill: the trainer endpoint {trainer} failed: {describe_error(exc)}"
