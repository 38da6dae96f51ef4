"""Durable state: a server started again on the same directory has lost nothing finished."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import openai

from distill_server import LocalServer

HYPER = {"n_epochs": 50, "batch_size": 2, "learning_rate_multiplier": 20}


def _client(srv: LocalServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.base_url, api_key="local", max_retries=0)


def _train(client: openai.OpenAI, file_id: str, epochs: int) -> Any:
    hyper = {**HYPER, "n_epochs": epochs}
    return client.fine_tuning.jobs.create(
        model="tiny",
        training_file=file_id,
        method={"type": "supervised", "supervised": {"hyperparameters": hyper}},
    )


def _wait_for_step(client: openai.OpenAI, job_id: str) -> None:
    deadline = time.monotonic() + 60
    while not any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job_id)):
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.1)


def _wait_final(client: openai.OpenAI, job_id: str) -> Any:
    deadline = time.monotonic() + 120
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    return job


def test_restart_mid_job_keeps_every_object_and_ends_the_job(
    tmp_path: Path, tiny_model: Path, make_training_file: Any
) -> None:
    models = {"tiny": tiny_model}
    with LocalServer(tmp_path, models=models) as first, _client(first) as client:
        file = client.files.create(file=("t.jsonl", make_training_file()), purpose="fine-tune")
        done = _wait_final(client, _train(client, file.id, 3).id)
        assert done.status == "succeeded"
        message = [{"role": "user", "content": "Which code goes with item 1?"}]
        stored = client.chat.completions.create(
            model=done.fine_tuned_model, messages=message, temperature=0, store=True, max_tokens=8
        )
        running = _train(client, file.id, 50)
        _wait_for_step(client, running.id)
    # The first server stopped mid-job: a second one on the same directory takes over.
    with LocalServer(tmp_path, models=models) as second, _client(second) as client:
        assert file.id in [f.id for f in client.files.list().data]
        assert client.files.content(file.id).content == make_training_file()
        jobs = {j.id: j for j in client.fine_tuning.jobs.list().data}
        assert jobs[done.id].status == "succeeded"
        interrupted = jobs[running.id]
        # Queued again under the same id; this server has already picked it up again.
        assert interrupted.status in ("queued", "running") and interrupted.error is None
        events = client.fine_tuning.jobs.list_events(running.id, limit=100).data
        assert any("queued again" in e.message for e in events)
        assert len(client.fine_tuning.jobs.list_events(done.id, limit=100).data) > 5
        assert client.fine_tuning.jobs.checkpoints.list(done.id).data
        assert [c.id for c in client.chat.completions.list().data] == [stored.id]
        assert done.fine_tuned_model in [m.id for m in client.models.list().data]
        again = client.chat.completions.create(
            model=done.fine_tuned_model, messages=message, temperature=0, max_tokens=8
        )
        assert again.choices[0].message.content == stored.choices[0].message.content


def test_queued_job_runs_after_a_restart(
    tmp_path: Path, tiny_model: Path, make_training_file: Any
) -> None:
    models = {"tiny": tiny_model}
    with LocalServer(tmp_path, models=models) as first, _client(first) as client:
        file = client.files.create(file=("t.jsonl", make_training_file()), purpose="fine-tune")
        running = _train(client, file.id, 50)
        _wait_for_step(client, running.id)
        queued = _train(client, file.id, 1)
        assert client.fine_tuning.jobs.retrieve(queued.id).status == "queued"
    with LocalServer(tmp_path, models=models) as second, _client(second) as client:
        assert _wait_final(client, running.id).status == "succeeded"  # queued again, then trained
        assert _wait_final(client, queued.id).status == "succeeded"


def test_job_of_a_killed_server_is_queued_again_not_left_running(
    tmp_path: Path, tiny_model: Path, make_training_file: Any
) -> None:
    repo = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "distill_server", "--port", "0"]
    command += ["--data-dir", str(tmp_path), "--model", f"tiny={tiny_model}"]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().split("serving on ")[1].split()[0]
        with openai.OpenAI(base_url=base_url, api_key="local", max_retries=0) as client:
            file = client.files.create(file=("t.jsonl", make_training_file()), purpose="fine-tune")
            job = _train(client, file.id, 50)
            _wait_for_step(client, job.id)
        proc.send_signal(signal.SIGKILL)  # no chance to clean up
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    with LocalServer(tmp_path, models={"tiny": tiny_model}) as srv, _client(srv) as client:
        after = client.fine_tuning.jobs.retrieve(job.id)
        assert after.status in ("queued", "running") and after.error is None
        events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
        assert any("queued again" in e.message for e in events)
