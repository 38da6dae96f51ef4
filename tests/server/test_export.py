"""``distill-server export``: the fine-tuned tiny model as a PEFT adapter, a merged model and an
Ollama folder, each giving the embedded server's greedy answers when loaded elsewhere."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from distill_server import cli

from .conftest import Api, OpenApi
from .test_jobs_api import FINAL, upload, wait

PROMPTS = [
    "Which code goes with item 3?",
    "Which animal goes with thing 40?",
    "What is the capital of France?",
    "Hello, how are you today?",
    "item 7",
    "Reply with the code.",
    "The quick brown fox jumps over the lazy dog.",
    "Which code?",
    "ZEBRA",
    "Tell me something about item 12345.",
]
SYSTEM = {"role": "system", "content": "Reply with the code."}


def messages(text: str) -> list[dict[str, str]]:
    return [SYSTEM, {"role": "user", "content": text}]


@dataclass(frozen=True)
class Trained:
    server: Any
    model_id: str
    answers: list[str]
    base_answers: list[str]


def _train(api: Api, data: bytes, **hyper: Any) -> str:
    hyper = {"n_epochs": 8, "batch_size": 4, "learning_rate_multiplier": 20, **hyper}
    job = api.call(
        "createFineTuningJob",
        "fine_tuning.jobs.create",
        model="tiny",
        training_file=upload(api, data),
        method={"type": "supervised", "supervised": {"hyperparameters": hyper}},
        seed=5,
    )
    done = wait(api, job.id, FINAL, timeout=300)
    assert done.status == "succeeded", done.error
    return str(done.fine_tuned_model)


def _two_answers() -> bytes:
    """Codes for items, animals for things: answers that depend on the prompt."""
    lines = [
        json.dumps({"messages": [*messages(f"Which {kind} goes with {noun} {i}?"), reply]})
        for kind, noun, answer in (("code", "item", "ZEBRA-7"), ("animal", "thing", "LION-3"))
        for i in range(8)
        for reply in [{"role": "assistant", "content": answer}]
    ]
    return ("\n".join(lines) + "\n").encode()


def _served(api: Api, model: str) -> list[str]:
    # One at a time: each answer is decoded alone, as a reference engine decodes it below.
    out = []
    for text in PROMPTS:
        result = api.call(
            "createChatCompletion",
            "chat.completions.create",
            model=model,
            messages=messages(text),
            temperature=0,
            max_tokens=12,
        )
        out.append(str(result.choices[0].message.content))
    return out


@pytest.fixture(scope="module")
def trained(server: Any, openapi: OpenApi) -> Iterator[Trained]:
    api = Api("sync", server.base_url, openapi)
    model_id = _train(api, _two_answers())
    yield Trained(server, model_id, _served(api, model_id), _served(api, "tiny"))
    api.close()


def greedy(model: Any, tokenizer: Any) -> list[str]:
    """Greedy answers from transformers' own ``generate``, one prompt at a time."""
    import torch

    eos = {tokenizer.eos_token_id, model.generation_config.eos_token_id} - {None}
    out = []
    for text in PROMPTS:
        rendered = tokenizer.apply_chat_template(
            messages(text), tokenize=False, add_generation_prompt=True
        )
        ids = torch.tensor([tokenizer(rendered, add_special_tokens=False)["input_ids"]])
        with torch.inference_mode():
            generated = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=12,
                do_sample=False,
                eos_token_id=sorted(eos),
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        out.append(tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True))
    return out


def _export(trained: Trained, target: Path, fmt: str, *extra: str) -> int:
    argv = ["export", trained.model_id, "--data-dir", str(trained.server.data_dir)]
    return cli.main([*argv, "--to", str(target), "--format", fmt, *extra])


def test_the_adapter_changes_the_answers(trained: Trained) -> None:
    assert trained.answers != trained.base_answers
    assert "ZEBRA-7" in trained.answers and "LION-3" in trained.answers


def test_peft_export_loads_with_peft_and_answers_as_the_server_does(
    trained: Trained, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = tmp_path / "student"
    assert _export(trained, target, "peft") == 0
    assert sorted(p.name for p in target.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "tool_chat_template.jinja",  # SmolLM2's template renders no tools: the server's format
    ]
    config = json.loads((target / "adapter_config.json").read_text())
    assert config["use_dora"] is False and config["modules_to_save"] is None
    assert config["r"] <= 16 and config["peft_type"] == "LORA"
    out = capsys.readouterr().out
    assert f"vllm serve {config['base_model_name_or_path']} --enable-lora --lora-modules " in out
    assert f"={target}" in out and "--max-lora-rank" not in out
    assert "--lora-paths" in out
    template = target / "tool_chat_template.jinja"
    assert f"--enable-auto-tool-choice --tool-call-parser hermes --chat-template {template}" in out
    assert f"--tool-call-parser qwen25 --chat-template {template}" in out

    from distill_server.weights.loading import quiet_peft

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    with quiet_peft(base):  # peft reads an alias transformers deprecated, as the server does
        model = PeftModel.from_pretrained(base, str(target)).eval()
    assert greedy(model, AutoTokenizer.from_pretrained(tiny_model)) == trained.answers


def test_merged_export_loads_with_transformers_and_answers_as_the_server_does(
    trained: Trained, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = tmp_path / "merged"
    assert _export(trained, target, "merged") == 0
    assert (target / "config.json").is_file() and (target / "tokenizer.json").is_file()
    assert not (target / "adapter_config.json").exists()
    assert (target / "tool_chat_template.jinja").is_file()
    model = AutoModelForCausalLM.from_pretrained(target).eval()
    assert greedy(model, AutoTokenizer.from_pretrained(target)) == trained.answers


def test_ollama_export_writes_a_modelfile_naming_the_base_and_the_adapter(
    trained: Trained, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "ollama"
    assert _export(trained, target, "ollama", "--name", "helpdesk") == 0
    modelfile = (target / "Modelfile").read_text()
    assert modelfile == f"FROM {tiny_model.resolve()}\nADAPTER ./adapter\n"
    assert (target / "adapter" / "adapter_model.safetensors").is_file()
    assert f"ollama create helpdesk -f {target / 'Modelfile'}" in capsys.readouterr().out


def test_a_rank_over_16_prints_the_max_lora_rank_vllm_needs(
    server: Any, openapi: OpenApi, make_training_file: Any, tmp_path: Path, capsys: Any
) -> None:
    api = Api("sync", server.base_url, openapi)
    model_id = _train(api, make_training_file(), n_epochs=1, lora_rank=24)
    api.close()
    target = tmp_path / "wide"
    argv = ["export", model_id, "--data-dir", str(server.data_dir), "--to", str(target)]
    assert cli.main(argv) == 0
    assert json.loads((target / "adapter_config.json").read_text())["r"] == 24
    out = capsys.readouterr().out
    assert "vLLM's default --max-lora-rank 16: serve it with 32" in out
    assert "--max-lora-rank 32" in out


def test_export_refuses_a_non_empty_target_and_leaves_it_alone(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "mine.txt").write_text("keep")
    assert _export(trained, target, "peft") == 2
    err = capsys.readouterr().err
    assert "exists and is not empty" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in target.iterdir()] == ["mine.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".taken.")]


def test_export_of_an_unknown_model_lists_the_fine_tuned_ones(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["export", "ft:nope", "--data-dir", str(trained.server.data_dir)]
    assert cli.main([*argv, "--to", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no fine-tuned model 'ft:nope'" in err and trained.model_id in err
    assert "\n" not in err


def test_export_without_server_state_says_which_directory_to_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["export", "ft:x", "--data-dir", str(tmp_path), "--to", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    assert "holds no server state" in capsys.readouterr().err
    assert not (tmp_path / "state.sqlite3").exists()


def test_serving_name_is_short_and_engine_safe() -> None:
    from distill_server.export import serving_name, vllm_max_rank

    assert serving_name("ft:SmolLM2-135M-Instruct:local:distill:1a2B3c4d") == "distill-1a2b3c4d"
    assert [vllm_max_rank(r) for r in (8, 16, 17, 64, 300)] == [None, None, 32, 64, 320]


def _old_record(data_dir: Path, base: str) -> None:
    """A model registered before the base's path was kept in the registry."""
    from distill_server.store import Record, Store

    store = Store(data_dir / "state.sqlite3")
    body = {"id": "ft:old", "object": "model", "created": 0, "owned_by": "local"}
    store.put(Record("model", "ft:old", body, {"base": base, "adapter": str(data_dir / "a")}))
    store.close()


def test_an_older_record_finds_the_default_base_or_the_one_named_on_the_command_line(
    tmp_path: Path, tiny_model: Path
) -> None:
    from distill_server.export import ExportError, find
    from distill_server.models import DEFAULT_MODEL_ID, default_gguf

    _old_record(tmp_path, DEFAULT_MODEL_ID)
    assert find(tmp_path, "ft:old").base.path == default_gguf()
    other = tmp_path / "other"
    other.mkdir()
    _old_record(other, "mine")
    with pytest.raises(ExportError, match=r"the base 'mine' .*--model mine=PATH"):
        find(other, "ft:old")
    assert find(other, "ft:old", {"mine": str(tiny_model)}).base.path == tiny_model
