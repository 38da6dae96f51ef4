"""A job that a stopped server left mid-training resumes from its last checkpoint."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai

from distill_server import LocalServer

HYPER = {"n_epochs": 50, "batch_size": 4, "learning_rate_multiplier": 4}


def _events(client: openai.OpenAI, job_id: str) -> list[Any]:
    """The job's events, oldest first."""
    return list(reversed(client.fine_tuning.jobs.list_events(job_id, limit=1000).data))


def _wait_for(client: openai.OpenAI, job_id: str, text: str) -> list[Any]:
    deadline = time.monotonic() + 120
    events = _events(client, job_id)
    while not any(text in e.message for e in events):
        assert time.monotonic() < deadline, f"no event {text!r}"
        time.sleep(0.1)
        events = _events(client, job_id)
    return events


def _client(server: LocalServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="local", max_retries=0)


def test_requeued_job_resumes_from_its_last_checkpoint(
    tmp_path: Path, tiny_model: Path, make_training_file: Any
) -> None:
    models = {"tiny": tiny_model}
    with LocalServer(tmp_path, models=models) as first, _client(first) as client:
        file = client.files.create(file=("t.jsonl", make_training_file()), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="tiny",
            training_file=file.id,
            method={"type": "supervised", "supervised": {"hyperparameters": HYPER}},
        )
        _wait_for(client, job.id, "Checkpoint created")
    # The first server stopped mid-job (a kill takes the same path at the next start-up).
    with LocalServer(tmp_path, models=models) as second, _client(second) as client:
        saved = max(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id))
        events = _wait_for(client, job.id, "Resuming from the checkpoint")
        resumed = next(k for k, e in enumerate(events) if "Resuming" in e.message)
        assert f"step {saved}" in events[resumed].message
        deadline = time.monotonic() + 120
        while not any(e.type == "metrics" for e in events[resumed:]):
            assert time.monotonic() < deadline, "no step after resuming"
            time.sleep(0.1)
            events = _events(client, job.id)
        first_step = next(e.data["step"] for e in events[resumed:] if e.type == "metrics")
        assert first_step == saved + 1
        client.fine_tuning.jobs.cancel(job.id)
