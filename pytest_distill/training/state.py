"""``.distill/state.json``: the jobs started, by key, and the fine-tuned model of the last run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pytest_distill import paths
from pytest_distill.atomic import write_atomic


class StateError(RuntimeError):
    """The state file cannot be read; the message says which file and what to do."""


class State:
    """``.distill/state.json``: jobs by key, and the current fine-tuned model."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            self.data = {}
        except (ValueError, OSError) as exc:
            raise StateError(
                f"{path}: unreadable state ({exc}); delete the file to start afresh"
            ) from None

    def job(self, key: str) -> dict[str, Any]:
        return dict(self.data.get("jobs", {}).get(key, {}))

    def save_job(self, key: str, **values: Any) -> None:
        jobs = self.data.setdefault("jobs", {})
        jobs[key] = {**jobs.get(key, {}), **values}
        self._write()

    def set_finetuned(self, model: str, endpoint: str, job_id: str) -> None:
        self.data["finetuned"] = {"model": model, "endpoint": endpoint, "job_id": job_id}
        self._write()

    def save_stage(self, method: str, stage: str, values: dict[str, Any]) -> None:
        """A training stage of ``method`` (``sft``, ``dpo``, ``rl``): its file, job and model;
        the second stage also names the first stage's job it continued (``after``)."""
        stages = self.data.setdefault("stages", {}).setdefault(method, {})
        stages[stage] = {**stages.get(stage, {}), **values}
        self._write()

    def stage(self, method: str, stage: str) -> dict[str, Any]:
        found = self.data.get("stages", {}).get(method, {}).get(stage, {})
        return dict(found) if isinstance(found, dict) else {}

    def finetuned(self) -> tuple[str, str] | None:
        """The fine-tuned model the last ``--distill`` made, and its endpoint, if any."""
        found = self.data.get("finetuned")
        if isinstance(found, dict) and found.get("model") and found.get("endpoint"):
            return str(found["model"]), str(found["endpoint"])
        return None

    def _write(self) -> None:
        write_atomic(self.path, (json.dumps(self.data, indent=2, sort_keys=True) + "\n").encode())


def trained_model(rootpath: Path) -> tuple[str, str] | None:
    """The (model, endpoint) a past ``--distill`` left under ``rootpath``; None when unknown.

    An unreadable state file is not this question's business: the distill step reports it.
    """
    try:
        return State(paths.state_file(rootpath)).finetuned()
    except StateError:
        return None
