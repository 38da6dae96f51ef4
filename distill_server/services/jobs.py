"""Fine-tuning jobs: the API's view (create, list, cancel, events) and their state machine.

Jobs move ``validating_files -> queued -> running -> succeeded | failed | cancelled``. Every
transition goes through ``Jobs.update`` under one lock, and a final state is never left, so a
cancel racing the trainer's last step cannot be overwritten by "succeeded".
"""

from __future__ import annotations

import importlib.util
import random
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

from distill_server.architectures import module_names
from distill_server.errors import ApiError, bad_request, not_found
from distill_server.lora_settings import LORA_KEYS, check_lora
from distill_server.models import FINAL, ModelSource, Registry, line_limit
from distill_server.services.files import Files
from distill_server.store import Record, Store, matches, new_id, paginate
from distill_shapes.methods import Method, MethodType, parse_method, training_file_kind
from distill_shapes.preference import iter_pairs
from distill_shapes.reinforcement import GraderJson, iter_prompts
from distill_shapes.tools import InvalidShape
from distill_shapes.training import InvalidTrainingFile, enough, iter_examples, read_lines

AUTO_EPOCHS = 3
_HYPER_KEYS = ("n_epochs", "batch_size", "learning_rate_multiplier")
_SUFFIX = re.compile(r"[A-Za-z0-9._-]{0,64}")


class Jobs:
    """Job records, their events and checkpoints; the runner does the training."""

    def __init__(self, store: Store, files: Files, registry: Registry) -> None:
        self.store = store
        self.files = files
        self.registry = registry
        self._lock = threading.Lock()
        self.queued = threading.Condition()

    def create(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Create a job and validate its files at once: it is queued or failed on return.

        A DPO or reinforcement job's files are checked before it is created: a file of the
        wrong shape is a 400 naming the file's parameter and what the method trains on."""
        method = _method_of(request)
        if method is not None:
            job = self._new_method_job(request, method)
            self.event(job["id"], f"Files validated: {job['training_file']}")
            job = self.update(job["id"], "queued")
            self.event(job["id"], "Files validated, moving job to queued state")
            with self.queued:
                self.queued.notify_all()
            return job
        job = self._new_job(request)
        self.event(job["id"], f"Validating training file: {job['training_file']}")
        param = "training_file"
        limit = line_limit(self.registry.start(job["model"]).base.context_length())
        try:
            n_examples = self.check_file(job[param], limit)
            if job["validation_file"]:
                param = "validation_file"
                self.check_file(job[param], limit)
        except InvalidTrainingFile as exc:
            message = str(exc).replace("training file", param.replace("_", " "), 1)
            error = {"code": f"invalid_{param}", "message": message, "param": param}
            return self.finish(job["id"], "failed", {"error": error}, level="error")
        resolved = _resolve_auto(job["hyperparameters"], n_examples)
        job = self.update(job["id"], "queued", hyperparameters=resolved, method=_method(resolved))
        self.event(job["id"], "Files validated, moving job to queued state")
        with self.queued:
            self.queued.notify_all()
        return job

    def check_file(self, file_id: str, max_line_bytes: int) -> int:
        """How many examples a training file holds, checked line by line from disk."""
        with self.files.path(file_id).open("rb") as stream:
            count = sum(1 for _ in iter_examples(read_lines(stream, max_line_bytes)))
        enough(count)
        return count

    def retrieve(self, job_id: str) -> dict[str, Any]:
        return self._record(job_id).body

    def list(self, after: str | None, limit: int, metadata: Mapping[str, str]) -> dict[str, Any]:
        bodies = [r.body for r in self.store.list("job")]
        bodies = [b for b in bodies if matches(b.get("metadata"), metadata)]
        return paginate(bodies, after=after, limit=limit, newest_first=True).body(cursors=False)

    def events(self, job_id: str, after: str | None, limit: int) -> dict[str, Any]:
        self._record(job_id)
        bodies = [r.body for r in self.store.list("event", parent=job_id)]
        return paginate(bodies, after=after, limit=limit, newest_first=True).body(cursors=False)

    def checkpoints(self, job_id: str, after: str | None, limit: int) -> dict[str, Any]:
        self._record(job_id)
        bodies = [r.body for r in self.store.list("checkpoint", parent=job_id)]
        return paginate(bodies, after=after, limit=limit, newest_first=True).body()

    def cancel(self, job_id: str) -> dict[str, Any]:
        status = self.retrieve(job_id)["status"]
        if status in FINAL:
            raise bad_request(f"Job {job_id!r} is already {status} and cannot be cancelled.")
        body = self.finish(job_id, "cancelled", {}, message="Fine-tuning job cancelled")
        # A job queued again after a restart has checkpoints: it will not resume now. (A running
        # one's trainer does this too once it stops, after any checkpoint it was saving.)
        self.registry.retain(job_id, resumable=False)
        return body

    def next_queued(self) -> dict[str, Any] | None:
        """The oldest queued job, if any."""
        queued = (r.body for r in self.store.list("job") if r.body["status"] == "queued")
        return next(queued, None)

    def update(self, job_id: str, status: str, **changes: Any) -> dict[str, Any]:
        """Move a job to ``status`` unless it is already final; returns the current body."""
        with self._lock:
            record = self._record(job_id)
            if record.body["status"] in FINAL:
                return record.body
            body = {**record.body, **changes, "status": status}
            self.store.put(Record("job", job_id, body, record.extra))
            return body

    def finish(
        self,
        job_id: str,
        status: str,
        changes: Mapping[str, Any],
        *,
        message: str | None = None,
        level: str = "info",
    ) -> dict[str, Any]:
        """Move to a final state, stamping ``finished_at`` and logging why."""
        before = self.retrieve(job_id)["status"]
        body = self.update(job_id, status, finished_at=int(time.time()), **changes)
        if before not in FINAL and body["status"] == status:
            error = body.get("error") or {}
            self.event(job_id, message or error.get("message", f"Job {status}"), level=level)
        return body

    def event(
        self, job_id: str, message: str, *, level: str = "info", data: dict[str, Any] | None = None
    ) -> None:
        event_id = new_id("ftevent-")
        body = {
            "object": "fine_tuning.job.event",
            "id": event_id,
            "created_at": int(time.time()),
            "level": level,
            "message": message,
            "type": "metrics" if data else "message",
            "data": data or {},
        }
        self.store.put(Record("event", event_id, body, {}), parent=job_id)

    def _record(self, job_id: str) -> Record:
        record = self.store.get("job", job_id)
        if record is None:
            raise not_found("fine-tuning job", job_id, "fine_tuning_job_id")
        return record

    def _new_method_job(self, request: Mapping[str, Any], method: Method) -> dict[str, Any]:
        """A DPO or reinforcement job, its files checked with the method's rules."""
        _methods_installed(method.type)
        if request.get("hyperparameters") is not None:
            raise bad_request(
                f"`hyperparameters` at the top level are for supervised jobs; put a {method.type} "
                f"job's in `method.{method.type}.hyperparameters`.",
                "hyperparameters",
            )
        if method.grader is not None:
            _check_grader(method.grader)
        model = _required_str(request, "model")
        limit = line_limit(self.registry.start(model).base.context_length())
        counts = {}
        for param in ("training_file", "validation_file"):
            file_id = request.get(param)
            if param == "training_file" or file_id is not None:
                file_id = _required_str(request, param)
                self._fine_tune_file(file_id, param, limit)
                counts[param] = self._check_method_file(file_id, param, method.type, limit)
        resolved = _resolve_method(method, counts["training_file"])
        common = {key: resolved[key] for key in _HYPER_KEYS}
        return self._new_job(request, common, _method_json(method, resolved))

    def _check_method_file(self, file_id: str, param: str, kind: MethodType, limit: int) -> int:
        """How many pairs or prompts the file holds, read line by line; a 400 naming ``param``
        and what the method trains on at the first line that breaks its rules."""
        reader = iter_pairs if kind == "dpo" else iter_prompts
        try:
            with self.files.path(file_id).open("rb") as stream:
                count = sum(1 for _ in reader(read_lines(stream, limit)))
            enough(count)
        except InvalidTrainingFile as exc:
            message = str(exc).replace("training file", param.replace("_", " "), 1)
            wants = training_file_kind(kind)
            raise bad_request(
                f"{message} A {kind} job's `{param}` holds {wants}.", param, f"invalid_{param}"
            ) from None
        return count

    def _new_job(
        self,
        request: Mapping[str, Any],
        hyper: dict[str, Any] | None = None,
        method: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        model = _required_str(request, "model")
        start = self.registry.start(model)
        limit = line_limit(start.base.context_length())
        training = self._fine_tune_file(
            _required_str(request, "training_file"), "training_file", limit
        )
        validation = request.get("validation_file")
        if validation is not None:
            self._fine_tune_file(str(validation), "validation_file", limit)
        suffix = request.get("suffix")
        if suffix is not None and not (isinstance(suffix, str) and _SUFFIX.fullmatch(suffix)):
            raise bad_request(
                f"`suffix` {suffix!r} must be at most 64 letters, digits, '-', '_' or '.': it "
                "becomes part of the model's id (ft:<base>:<org>:<suffix>:<id>).",
                "suffix",
            )
        if hyper is None:
            hyper = _hyperparameters(request)
            _check_targets(hyper.get("lora_target_modules"), start.base)
            given = [key for key in LORA_KEYS if key in hyper]
            if start.adapter is not None and given:
                raise bad_request(
                    f"`{given[0]}`: {model!r} is fine-tuned; its adapter trains on with the LoRA "
                    "settings it was made with. Leave the LoRA settings out.",
                    given[0],
                )
        job_id = new_id("ftjob-")
        seed = request.get("seed")
        body: dict[str, Any] = {
            "object": "fine_tuning.job",
            "id": job_id,
            "model": model,
            "created_at": int(time.time()),
            "finished_at": None,
            "fine_tuned_model": None,
            "organization_id": "local",
            "result_files": [],
            "status": "validating_files",
            "validation_file": validation,
            "training_file": training,
            "hyperparameters": hyper,
            "method": method or _method(hyper),
            "trained_tokens": None,
            "error": None,
            "seed": int(seed) if seed is not None else random.randrange(2**31),
            "metadata": check_metadata(request.get("metadata")),
            "estimated_finish": None,
            "integrations": None,
        }
        self.store.put(Record("job", job_id, body, {"suffix": suffix}))
        return body

    def _fine_tune_file(self, file_id: str, param: str, max_line_bytes: int) -> str:
        """The file's id, once it is known to be a fine-tune upload whose every line can fit
        the model's context: a line past ``max_line_bytes`` is a 400 naming it and the limit,
        found reading the file a block at a time (a 10 MB line would take the trainer
        hundreds of MB to tokenize before failing)."""
        try:
            purpose = self.files.retrieve(file_id)["purpose"]
        except ApiError:
            raise bad_request(f"File {file_id!r} does not exist.", param, "invalid_file") from None
        if purpose != "fine-tune":
            message = f"File {file_id!r} has purpose {purpose!r}; upload it with 'fine-tune'."
            raise bad_request(message, param, "invalid_file_purpose")
        try:
            with self.files.path(file_id).open("rb") as stream:
                for _ in read_lines(stream, max_line_bytes):
                    pass
        except InvalidTrainingFile as exc:
            message = str(exc).replace("training file", param.replace("_", " "), 1)
            raise bad_request(message, param, "line_too_long") from None
        return file_id


def _required_str(request: Mapping[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise bad_request(f"`{key}` is required and must be a string.", key, "missing_required")
    return value


def _hyperparameters(request: Mapping[str, Any]) -> dict[str, Any]:
    method = request.get("method") or {}
    if method.get("type", "supervised") != "supervised":
        raise bad_request(
            f"Only supervised fine-tuning runs here, not {method['type']!r}.", "method"
        )
    given = (
        (method.get("supervised") or {}).get("hyperparameters")
        or request.get("hyperparameters")
        or {}
    )
    hyper = {key: given.get(key, "auto") for key in _HYPER_KEYS}
    limits = {"n_epochs": (1, 50), "batch_size": (1, 256)}
    for key, (low, high) in limits.items():
        value = hyper[key]
        if value != "auto" and not (isinstance(value, int) and low <= value <= high):
            raise bad_request(f"`{key}` must be 'auto' or an integer from {low} to {high}.", key)
    lr = hyper["learning_rate_multiplier"]
    if lr != "auto" and not (isinstance(lr, int | float) and lr > 0):
        raise bad_request("`learning_rate_multiplier` must be 'auto' or a positive number.", "lr")
    return {**hyper, **check_lora(given)}


def _method_of(request: Mapping[str, Any]) -> Method | None:
    """A DPO or reinforcement ``method`` checked (a 400 naming its field), or None for a
    supervised job (checked by ``_hyperparameters``, with this server's LoRA keys)."""
    value = request.get("method")
    if not isinstance(value, Mapping) or value.get("type", "supervised") == "supervised":
        return None
    try:
        return parse_method(value)
    except InvalidShape as error:
        text = f"Invalid value for {error.field!r}: {error.problem}; {error.fix}."
        raise bad_request(text, error.field, "invalid_value") from None


def _methods_installed(kind: str) -> None:
    if importlib.util.find_spec("trl") is None:
        raise bad_request(
            f"A {kind} job needs the server's `methods` extra (TRL), which is not installed: "
            "pip install 'pytest-distill[methods]'.",
            "method",
            "method_not_installed",
        )


def _check_grader(grader: GraderJson) -> None:
    """A 400 naming the grader the server cannot evaluate (a model grader: no judge)."""
    from distill_server.trainer.rewards import UnusableGrader, check

    try:
        check(grader)
    except UnusableGrader as error:
        raise bad_request(str(error), error.field, "invalid_grader") from None


AUTO_RL_EPOCHS = 1
AUTO_BETA = 0.1


def _resolve_method(method: Method, n: int) -> dict[str, Any]:
    """A DPO or RL method's hyperparameters with ``auto`` resolved: DPO as supervised jobs
    (3 epochs, a tenth of the pairs a batch, 1 to 8) and ``beta`` 0.1; RL one epoch, a tenth of
    the prompts a step (1 to 4), ``compute_multiplier`` 1 (4 samples a prompt). RL's
    ``eval_interval``, ``eval_samples`` and ``reasoning_effort`` are kept as given: the server
    runs no separate evals and no reasoning models."""
    given = dict(method.hyperparameters)
    if method.type == "dpo":
        auto: dict[str, Any] = {
            "n_epochs": AUTO_EPOCHS,
            "batch_size": max(1, min(8, n // 10)),
            "learning_rate_multiplier": 1.0,
            "beta": AUTO_BETA,
        }
    else:
        auto = {
            "n_epochs": AUTO_RL_EPOCHS,
            "batch_size": max(1, min(4, n // 10)),
            "learning_rate_multiplier": 1.0,
            "compute_multiplier": 1.0,
        }
    resolved = {k: given.get(k, "auto") for k in auto}
    resolved = {k: auto[k] if v == "auto" else v for k, v in resolved.items()}
    return {**given, **resolved}


def _method_json(method: Method, hyper: Mapping[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"hyperparameters": dict(hyper)}
    if method.grader_json is not None:
        body = {"grader": dict(method.grader_json), **body}
    return {"type": method.type, method.type: body}


def _check_targets(modules: list[str] | None, base: ModelSource) -> None:
    """LoRA target modules the base model has (checked for the families the server knows)."""
    known = module_names(base.model_type())
    if modules is None or known is None:
        return
    unknown = [m for m in modules if m.rsplit(".", 1)[-1] not in known]
    if unknown:
        raise bad_request(
            f"`lora_target_modules`: {base.id!r} has no module {unknown[0]!r}; its modules are "
            f"{', '.join(sorted(known))}.",
            "lora_target_modules",
        )


def _resolve_auto(hyper: Mapping[str, Any], n_examples: int) -> dict[str, Any]:
    auto = {
        "n_epochs": AUTO_EPOCHS,
        "batch_size": max(1, min(8, n_examples // 10)),
        "learning_rate_multiplier": 1.0,
    }
    resolved = {key: auto[key] if hyper[key] == "auto" else hyper[key] for key in _HYPER_KEYS}
    return {**resolved, **{key: hyper[key] for key in LORA_KEYS if key in hyper}}


def _method(hyper: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "supervised", "supervised": {"hyperparameters": dict(hyper)}}


def check_metadata(value: Any) -> dict[str, str] | None:
    """OpenAI's metadata rules: at most 16 pairs, 64-character keys, 512-character values."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > 16:
        raise bad_request("`metadata` must be an object of at most 16 pairs.", "metadata")
    for key, item in value.items():
        if len(key) > 64 or not isinstance(item, str) or len(item) > 512:
            raise bad_request(
                f"metadata[{key!r}]: keys are at most 64 characters, values strings of at most "
                "512.",
                "metadata",
            )
    return dict(value)
