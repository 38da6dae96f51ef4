"""A student of another architecture (a tiny Qwen2 made here, with its own tokenizer and
template) trains and serves end to end through the API, like the SmolLM2-shaped one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from .conftest import Api, OpenApi
from .test_jobs_api import FINAL, events, upload, wait

QWEN_PROMPT = [
    {"role": "system", "content": "Reply with the code."},
    {"role": "user", "content": "Which code goes with item 3?"},
]


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_model import create_tiny_qwen2

    return create_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="module")
def qwen_server(tmp_path_factory: pytest.TempPathFactory, tiny_qwen: Path) -> Iterator[Any]:
    from distill_server import LocalServer

    data_dir = tmp_path_factory.mktemp("qwen-server")
    with LocalServer(data_dir, models={"qwen": tiny_qwen}, device="cpu") as srv:
        yield srv


@pytest.fixture
def qapi(qwen_server: Any, openapi: OpenApi) -> Iterator[Api]:
    client = Api("sync", qwen_server.base_url, openapi)
    yield client
    client.close()


def _job(qapi: Api, data: bytes, **hyper: Any) -> Any:
    hyper = {"n_epochs": 12, "batch_size": 4, "learning_rate_multiplier": 20, **hyper}
    method = {"type": "supervised", "supervised": {"hyperparameters": hyper}}
    job = qapi.call(
        "createFineTuningJob",
        "fine_tuning.jobs.create",
        model="qwen",
        training_file=upload(qapi, data),
        method=method,
        seed=1,
    )
    return wait(qapi, job.id, FINAL, timeout=300)


def _answer(qapi: Api, model: str, messages: list[dict[str, str]] = QWEN_PROMPT) -> str:
    result = qapi.call(
        "createChatCompletion",
        "chat.completions.create",
        model=model,
        messages=messages,
        temperature=0,
        max_tokens=12,
    )
    return str(result.choices[0].message.content)


def _adapter_config(server: Any, job: Any) -> dict[str, Any]:
    path = Path(server.data_dir) / "adapters" / job.id / "final" / "adapter_config.json"
    config: dict[str, Any] = json.loads(path.read_text())
    return config


def test_a_tiny_qwen2_trains_and_serves_through_the_api(
    qapi: Api, qwen_server: Any, make_training_file: Any
) -> None:
    before = _answer(qapi, "qwen")
    done = _job(qapi, make_training_file())
    assert done.status == "succeeded", done.error
    losses = [e.data["train_loss"] for e in events(qapi, done.id) if e.type == "metrics"]
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4
    assert before != "ZEBRA-7"
    assert _answer(qapi, done.fine_tuned_model) == "ZEBRA-7"
    config = _adapter_config(qwen_server, done)
    # Qwen2 names its projections the Llama way: every one is adapted, rank 16.
    assert sorted(config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    assert config["r"] == 16


def test_lora_rank_and_target_modules_come_from_the_job_when_given(
    qapi: Api, qwen_server: Any, make_training_file: Any
) -> None:
    done = _job(
        qapi,
        make_training_file(),
        n_epochs=1,
        lora_rank=4,
        lora_target_modules=["q_proj", "v_proj"],
    )
    assert done.status == "succeeded", done.error
    config = _adapter_config(qwen_server, done)
    assert config["r"] == 4 and config["lora_alpha"] == 8
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert done.hyperparameters.model_extra["lora_rank"] == 4


def test_bad_lora_hyperparameters_are_a_400_naming_the_key(
    qapi: Api, make_training_file: Any
) -> None:
    method = {
        "type": "supervised",
        "supervised": {"hyperparameters": {"lora_target_modules": "q_proj"}},
    }
    error = qapi.error(
        400,
        "fine_tuning.jobs.create",
        model="qwen",
        training_file=upload(qapi, make_training_file()),
        method=method,
    )
    assert error["param"] == "lora_target_modules"
    assert "list of module names" in error["message"]


def test_the_context_limit_is_the_models_own(qapi: Api) -> None:
    long = [{"role": "user", "content": "item " * 1100}]
    error = qapi.error(400, "chat.completions.create", model="qwen", messages=long, max_tokens=4)
    assert error["code"] == "context_length_exceeded"
    assert "this model's context is 1024" in error["message"]


def test_batched_answers_equal_one_at_a_time_despite_right_padding_tokenizer(
    qapi: Api, tiny_qwen: Path
) -> None:
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tiny_qwen).padding_side == "right"
    prompts = [
        [{"role": "user", "content": text}]
        for text in ("Hi", "Which code goes with item 12345?", "The quick brown fox jumps", "7")
    ]
    alone = [_answer(qapi, "qwen", p) for p in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda p: _answer(qapi, "qwen", p), prompts))
    assert together == alone
