"""Fine-tuning jobs on the tiny model, through the openai SDK (sync and async)."""

from __future__ import annotations

import json
import time
from typing import Any

FINAL = {"succeeded", "failed", "cancelled"}
PROMPT = [
    {"role": "system", "content": "Reply with the code."},
    {"role": "user", "content": "Which code goes with item 3?"},
]


def upload(api: Any, data: bytes) -> str:
    file = api.call("createFile", "files.create", file=("train.jsonl", data), purpose="fine-tune")
    return str(file.id)


def create_job(api: Any, file_id: str, epochs: int, **kwargs: Any) -> Any:
    hyper = {"n_epochs": epochs, "batch_size": 4, "learning_rate_multiplier": 20}
    method = {"type": "supervised", "supervised": {"hyperparameters": hyper}}
    return api.call(
        "createFineTuningJob",
        "fine_tuning.jobs.create",
        model="tiny",
        training_file=file_id,
        method=method,
        **kwargs,
    )


def wait(api: Any, job_id: str, until: set[str], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        job = api.call(
            "retrieveFineTuningJob", "fine_tuning.jobs.retrieve", fine_tuning_job_id=job_id
        )
        if job.status in until or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


def events(api: Any, job_id: str) -> list[Any]:
    page = api.call(
        "listFineTuningEvents",
        "fine_tuning.jobs.list_events",
        fine_tuning_job_id=job_id,
        limit=1000,
    )
    return list(reversed(page.data))


def answer(api: Any, model: str) -> str:
    result = api.call(
        "createChatCompletion",
        "chat.completions.create",
        model=model,
        messages=PROMPT,
        temperature=0,
        max_tokens=12,
    )
    return str(result.choices[0].message.content)


def test_job_trains_an_adapter_that_reproduces_the_training_target(
    api: Any, make_training_file: Any
) -> None:
    tag = {"case": f"train-{api.mode}"}
    job = create_job(
        api, upload(api, make_training_file()), 12, suffix="codes", metadata=tag, seed=3
    )
    assert job.status == "queued" and job.seed == 3
    found = api.call("listPaginatedFineTuningJobs", "fine_tuning.jobs.list", metadata=tag)
    assert [j.id for j in found.data] == [job.id]
    done = wait(api, job.id, FINAL)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:tiny:local:codes:{job.id[-8:]}"
    assert done.trained_tokens and done.trained_tokens > 0
    log = events(api, job.id)
    messages = [e.message for e in log]
    assert messages[0].startswith("Validating training file")
    assert "Fine-tuning job started" in messages
    losses = [e.data["train_loss"] for e in log if e.type == "metrics"]
    assert len(losses) == 36 and [e.data["step"] for e in log if e.type == "metrics"][-1] == 36
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4
    assert answer(api, "tiny") != "ZEBRA-7"
    assert answer(api, done.fine_tuned_model) == "ZEBRA-7"
    assert done.fine_tuned_model in [m.id for m in api.call("listModels", "models.list").data]


def test_checkpoints_and_results_file_record_the_metrics(api: Any, make_training_file: Any) -> None:
    file_id = upload(api, make_training_file())
    job = wait(api, create_job(api, file_id, 2, validation_file=file_id).id, FINAL)
    assert job.status == "succeeded", job.error
    checkpoints = api.call(
        "listFineTuningJobCheckpoints",
        "fine_tuning.jobs.checkpoints.list",
        fine_tuning_job_id=job.id,
    )
    assert [c.step_number for c in checkpoints.data] == [6, 3]
    assert checkpoints.data[0].fine_tuned_model_checkpoint.endswith(":ckpt-step-6")
    assert checkpoints.data[0].metrics.valid_loss is not None
    results = api.raw("files.content", file_id=job.result_files[0]).text.splitlines()
    assert results[0] == "step,train_loss,train_accuracy" and len(results) == 7


def test_fine_tuned_model_can_be_deleted_but_a_base_cannot(
    api: Any, make_training_file: Any
) -> None:
    job = wait(api, create_job(api, upload(api, make_training_file()), 1).id, FINAL)
    model = job.fine_tuned_model
    deleted = api.call("deleteModel", "models.delete", model=model)
    assert (deleted.id, deleted.deleted) == (model, True)
    assert model not in [m.id for m in api.call("listModels", "models.list").data]
    api.error(404, "chat.completions.create", model=model, messages=PROMPT)
    api.error(403, "models.delete", model="tiny")


def test_file_breaking_a_rule_fails_the_job_naming_line_and_rule(
    api: Any, make_training_file: Any
) -> None:
    lines = make_training_file().decode().splitlines()
    lines[2] = json.dumps({"messages": [{"role": "user", "content": "no answer here"}]})
    job = create_job(api, upload(api, "\n".join(lines).encode()), 1)
    assert job.status == "failed"
    assert job.error.code == "invalid_training_file" and job.error.param == "training_file"
    assert "line 3" in job.error.message and "assistant" in job.error.message
    assert events(api, job.id)[-1].level == "error"


def test_bad_validation_file_fails_the_job_naming_it(api: Any, make_training_file: Any) -> None:
    good = upload(api, make_training_file())
    job = create_job(api, good, 1, validation_file=upload(api, b'{"messages": 3}\n'))
    assert job.status == "failed" and job.error.param == "validation_file"
    assert job.error.message.startswith("Invalid validation file: line 1:")


def test_file_with_too_few_examples_fails_the_job(api: Any, make_training_file: Any) -> None:
    job = create_job(api, upload(api, make_training_file(n=4)), 1)
    assert job.status == "failed" and "at least 10" in job.error.message


def test_job_for_a_missing_file_or_model_is_400(api: Any, make_training_file: Any) -> None:
    error = api.error(400, "fine_tuning.jobs.create", model="tiny", training_file="file-nope")
    assert error["param"] == "training_file"
    file_id = upload(api, make_training_file())
    error = api.error(400, "fine_tuning.jobs.create", model="gpt-4o", training_file=file_id)
    assert error["param"] == "model" and "tiny" in error["message"]


def test_unknown_job_id_is_404_on_every_job_endpoint(api: Any) -> None:
    for method in (
        "fine_tuning.jobs.retrieve",
        "fine_tuning.jobs.cancel",
        "fine_tuning.jobs.list_events",
        "fine_tuning.jobs.checkpoints.list",
    ):
        api.error(404, method, fine_tuning_job_id="ftjob-missing")


def test_cancel_stops_a_running_job_within_a_step(api: Any, make_training_file: Any) -> None:
    job = create_job(api, upload(api, make_training_file(n=40)), 50)
    deadline = time.monotonic() + 60
    while not any(e.type == "metrics" for e in events(api, job.id)):
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.1)
    cancelled = api.call(
        "cancelFineTuningJob", "fine_tuning.jobs.cancel", fine_tuning_job_id=job.id
    )
    assert cancelled.status == "cancelled"
    steps_at_cancel = len([e for e in events(api, job.id) if e.type == "metrics"])
    deadline = time.monotonic() + 30
    while not (stopped := [e for e in events(api, job.id) if "stopped" in e.message]):
        assert time.monotonic() < deadline, "the trainer did not stop"
        time.sleep(0.1)
    # The step in flight when the cancel arrived may finish; no step starts after it.
    steps = len([e for e in events(api, job.id) if e.type == "metrics"])
    assert steps <= steps_at_cancel + 1
    assert stopped[0].message == f"Training stopped after step {steps}"
    final = wait(api, job.id, FINAL)
    assert final.status == "cancelled" and final.fine_tuned_model is None
    error = api.error(400, "fine_tuning.jobs.cancel", fine_tuning_job_id=job.id)
    assert "cancelled" in error["message"]
