"""The server under careless use: disk given back, cancels that land at every stage."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from distill_server import LocalServer
from distill_server.models import OPTIMIZER_STATE

FINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[LocalServer]:
    with LocalServer(tmp_path_factory.mktemp("disk"), models={"tiny": tiny_model}) as srv:
        yield srv


@pytest.fixture
def client(served: LocalServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=served.base_url, api_key="local", max_retries=0) as c:
        yield c


def upload(client: openai.OpenAI, data: bytes) -> str:
    return client.files.create(file=("train.jsonl", data), purpose="fine-tune").id


def start(client: openai.OpenAI, file_id: str, epochs: int, **hyper: Any) -> Any:
    hp = {"n_epochs": epochs, "batch_size": 4, "learning_rate_multiplier": 4, **hyper}
    return client.fine_tuning.jobs.create(
        model="tiny",
        training_file=file_id,
        method={"type": "supervised", "supervised": {"hyperparameters": hp}},
    )


def wait(client: openai.OpenAI, job_id: str, until: set[str], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    job = client.fine_tuning.jobs.retrieve(job_id)
    while job.status not in until:
        assert time.monotonic() < deadline, f"job still {job.status}"
        time.sleep(0.05)
        job = client.fine_tuning.jobs.retrieve(job_id)
    return job


def wait_event(client: openai.OpenAI, job_id: str, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in e.message for e in client.fine_tuning.jobs.list_events(job_id)):
        assert time.monotonic() < deadline, f"no event {text!r}"
        time.sleep(0.02)


def states(job_dir: Path) -> list[str]:
    return sorted(p.parent.name for p in job_dir.glob(f"*/{OPTIMIZER_STATE}"))


def test_a_finished_job_keeps_its_last_three_checkpoints_and_no_optimizer_state(
    served: LocalServer, client: openai.OpenAI, make_training_file: Any
) -> None:
    job = wait(client, start(client, upload(client, make_training_file()), 5).id, FINAL)
    assert job.status == "succeeded", job.error
    job_dir = served.data_dir / "adapters" / job.id
    listed = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert sorted(c.step_number for c in listed) == [9, 12, 15]
    assert sorted(p.name for p in job_dir.iterdir()) == ["final", "step-12", "step-15", "step-9"]
    assert states(job_dir) == []


def test_a_running_job_keeps_optimizer_state_on_its_latest_checkpoint_only(
    served: LocalServer, client: openai.OpenAI, make_training_file: Any
) -> None:
    job = start(client, upload(client, make_training_file()), 50)
    job_dir = served.data_dir / "adapters" / job.id
    deadline = time.monotonic() + 120
    while len(client.fine_tuning.jobs.checkpoints.list(job.id).data) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    client.fine_tuning.jobs.cancel(job.id)  # between the two reads, a newer one may be saved
    wait_event(client, job.id, "Training stopped")
    assert states(job_dir) == []  # a cancelled job never resumes


def test_deleting_a_model_deletes_its_adapter_and_checkpoints(
    served: LocalServer, client: openai.OpenAI, make_training_file: Any
) -> None:
    job = wait(client, start(client, upload(client, make_training_file()), 2).id, FINAL)
    job_dir = served.data_dir / "adapters" / job.id
    assert job_dir.is_dir()
    assert client.models.delete(job.fine_tuned_model).deleted
    assert not job_dir.exists()
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data == []


def test_keep_checkpoints_is_a_setting(
    tmp_path: Path, tiny_model: Path, make_training_file: Any
) -> None:
    with (
        LocalServer(tmp_path, models={"tiny": tiny_model}, keep_checkpoints=1) as srv,
        openai.OpenAI(base_url=srv.base_url, api_key="local", max_retries=0) as client,
    ):
        job = wait(client, start(client, upload(client, make_training_file()), 3).id, FINAL)
        steps = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id).data]
        assert steps == [9]
        assert sorted(p.name for p in (tmp_path / "adapters" / job.id).iterdir()) == [
            "final",
            "step-9",
        ]


def test_the_cli_takes_keep_checkpoints() -> None:
    from distill_server.cli import parser

    assert parser().parse_args(["--keep-checkpoints", "5"]).keep_checkpoints == 5
    assert parser().parse_args([]).keep_checkpoints == 3
    with pytest.raises(SystemExit):
        parser().parse_args(["--keep-checkpoints", "0"])


def big_file(n: int) -> bytes:
    from .conftest import training_lines

    lines = training_lines(12)
    return ("\n".join(lines[i % 12] for i in range(n)) + "\n").encode()


def test_a_cancel_while_the_job_prepares_its_data_stops_it_promptly(
    client: openai.OpenAI,
) -> None:
    job = start(client, upload(client, big_file(20_000)), 1, batch_size=1)
    wait_event(client, job.id, "Fine-tuning job started")
    client.fine_tuning.jobs.cancel(job.id)
    began = time.monotonic()
    wait_event(client, job.id, "Training stopped after step 0", timeout=60)
    assert time.monotonic() - began < 5
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"


def test_a_cancel_while_queued_never_starts_the_job(
    client: openai.OpenAI, make_training_file: Any
) -> None:
    file_id = upload(client, make_training_file())
    running = start(client, file_id, 50)
    queued = start(client, file_id, 1)
    assert client.fine_tuning.jobs.cancel(queued.id).status == "cancelled"
    client.fine_tuning.jobs.cancel(running.id)
    wait_event(client, running.id, "Training stopped")
    messages = [e.message for e in client.fine_tuning.jobs.list_events(queued.id)]
    assert not any("started" in m for m in messages)
    assert client.fine_tuning.jobs.retrieve(queued.id).status == "cancelled"


def test_a_cancel_while_the_final_adapter_is_saved_registers_no_model(
    served: LocalServer,
    client: openai.OpenAI,
    make_training_file: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    from distill_server.trainer import checkpoints

    saving, cancelled = threading.Event(), threading.Event()
    save = checkpoints.save

    def slow_save(model: Any, path: Path, state: Any = None) -> Path:
        if path.name == "final":
            saving.set()
            cancelled.wait(30)
        return save(model, path, state)

    monkeypatch.setattr(checkpoints, "save", slow_save)
    job = start(client, upload(client, make_training_file()), 1)
    assert saving.wait(120)
    client.fine_tuning.jobs.cancel(job.id)
    cancelled.set()
    wait_event(client, job.id, "Training stopped after step 3")
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert (done.status, done.fine_tuned_model) == ("cancelled", None)
    served_ids = [m.id for m in client.models.list()]
    assert not any(job.id[-8:] in model for model in served_ids)
    assert not (served.data_dir / "adapters" / job.id / "final").exists()


def test_a_line_too_long_for_the_context_is_refused_when_the_job_is_created(
    client: openai.OpenAI, make_training_file: Any
) -> None:
    from distill_server.models import line_limit

    limit = line_limit(2048)  # the tiny model's context
    huge = json.dumps({"messages": [{"role": "user", "content": "x" * (10 << 20)}]}).encode()
    file_id = upload(client, make_training_file() + huge + b"\n")
    with pytest.raises(openai.BadRequestError) as info:
        start(client, file_id, 1)
    message = info.value.response.json()["error"]["message"]
    assert "line 13" in message and str(limit) in message, message


def test_training_files_are_read_line_by_line() -> None:
    import io

    from distill_shapes.training import (
        InvalidTrainingFile,
        parse_training_file,
        parse_training_lines,
        read_lines,
    )

    from .conftest import training_lines

    data = ("\r\n".join(training_lines(12)) + "\r\n").encode()
    assert parse_training_lines(read_lines(io.BytesIO(data), 1000)) == parse_training_file(data)

    class Unbounded(io.BytesIO):
        def readline(self, size: int | None = -1) -> bytes:
            assert size is not None and 0 < size <= 1002, "a line read without a bound"
            return super().readline(size)

    with pytest.raises(InvalidTrainingFile, match="line 1: the line is longer than 1000 bytes"):
        list(read_lines(Unbounded(b"x" * 5000 + b"\n"), 1000))


def test_the_job_page_reads_only_the_head_of_its_training_file(
    served: LocalServer, client: openai.OpenAI
) -> None:
    from distill_server.services.files import Files
    from distill_server.store import Store

    store = Store(served.data_dir / "head.sqlite3")
    files = Files(store, served.data_dir / "head-files")
    body = files.add("big.jsonl", "fine-tune", b"x" * (1 << 20) + b"\nsecond\n")
    (line,) = files.head(body["id"], 20)
    assert len(line) == 64 << 10
    assert files.head(files.add("s", "fine-tune", b"a\nb\nc")["id"], 2) == ["a", "b"]
    assert files.count_lines(body["id"]) == 2
    store.close()


@pytest.mark.parametrize("suffix", ["a\nb", "nul\x00", "a:b", "a/b", "x" * 65])
def test_a_suffix_that_cannot_be_part_of_a_model_id_is_refused(
    client: openai.OpenAI, make_training_file: Any, suffix: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.fine_tuning.jobs.create(
            model="tiny", training_file=upload(client, make_training_file()), suffix=suffix
        )
    assert info.value.response.json()["error"]["param"] == "suffix"


def test_lora_targets_the_base_model_lacks_are_refused(
    client: openai.OpenAI, make_training_file: Any
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        start(client, upload(client, make_training_file()), 1, lora_target_modules=["no_such"])
    error = info.value.response.json()["error"]
    assert error["param"] == "lora_target_modules" and "'no_such'" in error["message"]


def test_a_file_a_queued_job_trains_on_cannot_be_deleted(
    client: openai.OpenAI, make_training_file: Any
) -> None:
    file_id = upload(client, make_training_file())
    job = start(client, file_id, 50)
    with pytest.raises(openai.ConflictError) as info:
        client.files.delete(file_id)
    assert job.id in info.value.response.json()["error"]["message"]
    client.fine_tuning.jobs.cancel(job.id)
    wait(client, job.id, FINAL)
    assert client.files.delete(file_id).deleted


def test_checkpoint_models_are_served(client: openai.OpenAI, make_training_file: Any) -> None:
    job = wait(client, start(client, upload(client, make_training_file()), 2).id, FINAL)
    for checkpoint in client.fine_tuning.jobs.checkpoints.list(job.id).data:
        model = checkpoint.fine_tuned_model_checkpoint
        assert client.models.retrieve(model).id == model
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert reply.model == model


def test_the_trainer_holds_no_model_after_a_job(
    client: openai.OpenAI, make_training_file: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import weakref

    from distill_server.trainer import lora

    trained: list[weakref.ref[Any]] = []
    wrap = lora._lora

    def recorded(base: Any, hp: Any) -> Any:
        model = wrap(base, hp)
        trained.append(weakref.ref(model))
        return model

    monkeypatch.setattr(lora, "_lora", recorded)
    job = wait(client, start(client, upload(client, make_training_file()), 1).id, FINAL)
    assert job.status == "succeeded"
    # No collection here: the trainer keeps no reference to the model once a job ends.
    deadline = time.monotonic() + 10
    while trained[0]() is not None:  # the worker may still be leaving the job
        assert time.monotonic() < deadline, "the trained model is still alive"
        time.sleep(0.1)
