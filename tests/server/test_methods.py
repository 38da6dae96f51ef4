"""DPO and grader-rewarded RL jobs on the embedded server (TRL, the ``methods`` extra), driven
through the OpenAI SDK with the tiny model: bodies and job objects in the API's shapes, the
trained model served, rewards equal to the plugin's grades, a stopped RL job resumed, and bad
bodies refused naming the field."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from distill_server import LocalServer
from distill_shapes.methods import method_json
from distill_shapes.preference import preference_line
from distill_shapes.reinforcement import grader_json, parse_grader, reinforcement_line

from .conftest import training_lines

pytest.importorskip("trl", reason="the methods extra (TRL) is not installed")

HAS_E = {
    "type": "string_check",
    "name": "has_letter",
    "input": "{{sample.output_text}}",
    "reference": "{{item.reference}}",
    "operation": "ilike",
}


def _client(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="local", max_retries=0)


def _upload(client: openai.OpenAI, lines: list[dict[str, Any]]) -> str:
    data = ("\n".join(json.dumps(line) for line in lines) + "\n").encode()
    return client.files.create(file=("f.jsonl", data), purpose="fine-tune").id


def _pairs(n: int = 12) -> list[dict[str, Any]]:
    return [
        preference_line(
            [{"role": "user", "content": f"Which code goes with item {i}?"}],
            {"role": "assistant", "content": "ZEBRA-7"},
            {"role": "assistant", "content": "LION-3"},
        )
        for i in range(n)
    ]


def _prompts(n: int = 10, reference: str = "e") -> list[dict[str, Any]]:
    return [
        reinforcement_line(
            [{"role": "user", "content": f"Which code goes with item {i}?"}],
            {"reference": reference},
        )
        for i in range(n)
    ]


def _wait(client: openai.OpenAI, job_id: str, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    job = client.fine_tuning.jobs.retrieve(job_id)
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job {job_id} did not finish: {job.status}"
        time.sleep(0.2)
        job = client.fine_tuning.jobs.retrieve(job_id)
    return job


def _events(client: openai.OpenAI, job_id: str) -> list[Any]:
    return list(reversed(client.fine_tuning.jobs.list_events(job_id, limit=1000).data))


@pytest.fixture
def short_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two-token RL samples: the random tiny model then contains an 'e' about half the time,
    so every prompt's pass rate is strictly between 0 and 1."""
    from distill_server.trainer import methods

    monkeypatch.setattr(methods, "RL_MAX_COMPLETION_TOKENS", 2)


@pytest.fixture(scope="module")
def sft_model(server: Any) -> str:
    """A first stage: the tiny model fine-tuned (supervised) on this server."""
    data = ("\n".join(training_lines()) + "\n").encode()
    with _client(server) as client:
        file = client.files.create(file=("t.jsonl", data), purpose="fine-tune")
        hyper = {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 4}
        job = client.fine_tuning.jobs.create(
            model="tiny",
            training_file=file.id,
            method={"type": "supervised", "supervised": {"hyperparameters": hyper}},
            seed=1,
        )
        job = _wait(client, job.id)
    assert job.status == "succeeded", job.error
    return str(job.fine_tuned_model)


def test_dpo_job_continues_a_fine_tuned_model_and_serves(
    server: Any, sft_model: str, openapi: Any
) -> None:
    with _client(server) as client:
        training = _upload(client, _pairs())
        # (beta and the multiplier above 1: the spec's `exclusiveMinimum: true`, an OpenAPI 3.0
        # boolean, reads as a minimum of 1 to a JSON Schema 2020-12 validator)
        hyper = {"beta": 1.5, "n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 2}
        method = method_json("dpo", hyper)
        openapi.validate_schema("FineTuneMethod", method)
        raw = client.fine_tuning.jobs.with_raw_response.create(
            model=sft_model, training_file=training, method=method, seed=5
        )
        openapi.validate("createFineTuningJob", json.loads(raw.text))
        job = _wait(client, raw.parse().id)
        assert job.status == "succeeded", job.error
        body = client.fine_tuning.jobs.with_raw_response.retrieve(job.id)
        openapi.validate("retrieveFineTuningJob", json.loads(body.text))
        assert json.loads(body.text)["method"]["dpo"]["hyperparameters"] == hyper
        # The result is again a fine-tuned model of the base, served like any other.
        assert job.fine_tuned_model and job.fine_tuned_model.startswith("ft:tiny:")
        metrics = [e.data for e in _events(client, job.id) if e.type == "metrics"]
        assert metrics and {"reward_margin", "rewards_chosen", "rewards_rejected"} <= set(
            metrics[-1]
        )
        assert [m["step"] for m in metrics] == [1, 2, 3]
        reply = client.chat.completions.create(
            model=job.fine_tuned_model,
            messages=[{"role": "user", "content": "Which code goes with item 3?"}],
            max_tokens=4,
        )
        assert reply.choices[0].message.content is not None
        assert job.fine_tuned_model in [m.id for m in client.models.list().data]


def test_rl_job_trains_on_the_prompts_it_sometimes_passes(
    server: Any, openapi: Any, short_answers: None
) -> None:
    with _client(server) as client:
        training = _upload(client, _prompts())
        grader = grader_json([HAS_E])
        hyper = {"n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 2}
        hyper["compute_multiplier"] = 1.5  # 6 samples a prompt (and above 1: see the DPO test)
        method = method_json("reinforcement", hyper, grader)
        openapi.validate_schema("FineTuneMethod", method)
        job = client.fine_tuning.jobs.create(
            model="tiny", training_file=training, method=method, seed=2
        )
        job = _wait(client, job.id)
        assert job.status == "succeeded", job.error
        body = json.loads(client.fine_tuning.jobs.with_raw_response.retrieve(job.id).text)
        openapi.validate("retrieveFineTuningJob", body)
        assert body["method"]["reinforcement"]["grader"] == grader
        assert body["method"]["reinforcement"]["hyperparameters"] == hyper
        events = _events(client, job.id)
        used = next(e.message for e in events if e.message.startswith("Training on"))
        assert "of 10 prompts" in used and "6 samples each" in used
        metrics = [e.data for e in events if e.type == "metrics"]
        assert metrics and {"reward", "pass_rate"} <= set(metrics[-1])
        assert 0.0 <= metrics[-1]["reward"] <= 1.0
        reply = client.chat.completions.create(
            model=str(job.fine_tuned_model),
            messages=[{"role": "user", "content": "Which code goes with item 3?"}],
            max_tokens=4,
        )
        assert reply.choices[0].message is not None


def test_rl_job_with_no_usable_prompt_fails_naming_the_count(
    server: Any, short_answers: None
) -> None:
    never = {**HAS_E, "operation": "eq"}
    with _client(server) as client:
        training = _upload(client, _prompts(reference="never-said-QQ"))
        method = method_json("reinforcement", {"n_epochs": 1}, grader_json([never]))
        job = client.fine_tuning.jobs.create(model="tiny", training_file=training, method=method)
        job = _wait(client, job.id)
    assert job.status == "failed"
    assert job.error.code == "no_usable_prompts"
    assert "none of the 10 prompts" in job.error.message


def test_a_reward_is_the_score_of_the_same_grader_in_an_eval_item() -> None:
    from distill_server.trainer.rewards import Rewarder
    from distill_shapes.reinforcement import iter_prompts
    from pytest_distill.grading.registry import Sample, make_grader

    similar = {
        "type": "text_similarity",
        "name": "close",
        "input": "{{sample.output_text}}",
        "reference": "{{item.reference}}",
        "evaluation_metric": "fuzzy_match",
        "pass_threshold": 0.8,
    }
    line = json.dumps(_prompts(1, reference="ZEBRA-7")[0])
    (prompt,) = iter_prompts([line])
    for answer in ("ZEBRA-7", "zebra 7", "LION-3", ""):
        for spec in (HAS_E, similar):
            want = make_grader(spec).grade(Sample(answer), prompt.item).score
            got = Rewarder(parse_grader(grader_json([spec]))).score(answer, prompt)
            assert got.reward == want
        both = Rewarder(parse_grader(grader_json([HAS_E, similar]))).score(answer, prompt)
        scores = [make_grader(s).grade(Sample(answer), prompt.item).score for s in (HAS_E, similar)]
        assert both.reward == pytest.approx(sum(scores) / 2)


def test_a_stopped_rl_job_resumes_from_its_checkpoint(
    tmp_path: Path, tiny_model: Path, short_answers: None
) -> None:
    models = {"tiny": tiny_model}
    method = method_json("reinforcement", {"n_epochs": 30, "batch_size": 4}, grader_json([HAS_E]))
    with LocalServer(tmp_path, models=models) as first, _client(first) as client:
        training = _upload(client, _prompts())
        job = client.fine_tuning.jobs.create(model="tiny", training_file=training, method=method)
        deadline = time.monotonic() + 240
        while not any("Checkpoint created" in e.message for e in _events(client, job.id)):
            assert time.monotonic() < deadline, "no checkpoint"
            assert client.fine_tuning.jobs.retrieve(job.id).status != "failed"
            time.sleep(0.2)
    # The first server stopped mid-job (a kill takes the same path at the next start-up).
    with LocalServer(tmp_path, models=models) as second, _client(second) as client:
        saved = max(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id))
        deadline = time.monotonic() + 240
        events = _events(client, job.id)
        while True:
            resumed = [k for k, e in enumerate(events) if "Resuming" in e.message]
            after = [e for e in events[resumed[0] :] if e.type == "metrics"] if resumed else []
            if after:
                break
            assert time.monotonic() < deadline, "no step after resuming"
            time.sleep(0.2)
            events = _events(client, job.id)
        assert f"step {saved}" in events[resumed[0]].message
        assert after[0].data["step"] == saved + 1
        client.fine_tuning.jobs.cancel(job.id)


def test_bad_method_bodies_are_400s_naming_the_field(server: Any) -> None:
    with _client(server) as client:
        pairs, prompts = _upload(client, _pairs()), _upload(client, _prompts())
        chat = _upload(
            client,
            [
                {
                    "messages": [
                        {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "yo"},
                    ]
                }
            ]
            * 10,
        )
        cases = [
            # a DPO job sent chat lines
            (
                dict(training_file=chat, method=method_json("dpo")),
                "training_file",
                "preference lines",
            ),
            # a reinforcement job sent preference lines
            (
                dict(training_file=pairs, method=method_json("reinforcement", None, HAS_E)),
                "training_file",
                "prompt lines",
            ),
            (
                dict(
                    training_file=pairs,
                    method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 3}}},
                ),
                "method.dpo.hyperparameters.beta",
                "at most 2",
            ),
            (
                dict(
                    training_file=prompts,
                    method=method_json(
                        "reinforcement",
                        None,
                        {"type": "score_model", "name": "judge", "model": "x", "input": []},
                    ),
                ),
                "method.reinforcement.grader",
                "judge",
            ),
            (
                dict(
                    training_file=prompts,
                    method=method_json(
                        "reinforcement",
                        None,
                        grader_json([HAS_E, {"type": "label_model", "name": "lab"}]),
                    ),
                ),
                "method.reinforcement.grader.graders.lab",
                "judge",
            ),
            (
                dict(training_file=prompts, method={"type": "reinforcement", "reinforcement": {}}),
                "method.reinforcement.grader",
                "missing",
            ),
            (
                dict(
                    training_file=pairs, method=method_json("dpo"), hyperparameters={"n_epochs": 1}
                ),
                "hyperparameters",
                "method.dpo.hyperparameters",
            ),
        ]
        for kwargs, param, words in cases:
            with pytest.raises(openai.BadRequestError) as info:
                client.fine_tuning.jobs.create(model="tiny", **kwargs)
            error = info.value.response.json()["error"]
            assert error["param"] == param, error
            assert words in error["message"], error


def test_a_missing_methods_extra_is_a_400_with_the_install_line(
    server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real(name, *a)
    )
    with _client(server) as client:
        pairs = _upload(client, _pairs())
        with pytest.raises(openai.BadRequestError) as info:
            client.fine_tuning.jobs.create(
                model="tiny", training_file=pairs, method=method_json("dpo")
            )
    error = info.value.response.json()["error"]
    assert error["param"] == "method"
    assert "pip install 'pytest-distill[methods]'" in error["message"]
