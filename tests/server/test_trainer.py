"""The LoRA trainer: its limit is the model's context, its seed reproduces, it resumes."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from distill_server.models import ModelSource
from distill_server.trainer.lora import (
    Callbacks,
    Checkpoint,
    Hyperparameters,
    StepMetrics,
    train_lora,
)
from distill_shapes.training import InvalidTrainingFile, parse_training_file


def training_lines() -> list[str]:
    return [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Which code goes with item {i}?"},
                    {"role": "assistant", "content": "ZEBRA-7"},
                ]
            }
        )
        for i in range(12)
    ]


HP = Hyperparameters(n_epochs=2, batch_size=4, learning_rate_multiplier=4, seed=7)


class Recorder:
    def __init__(self, stop_after: int | None = None) -> None:
        self.steps: list[int] = []
        self.metrics: list[StepMetrics] = []
        self.checkpoints: list[Checkpoint] = []
        self.stop_after = stop_after

    def _step(self, metrics: StepMetrics) -> None:
        self.steps.append(metrics.step)
        self.metrics.append(metrics)

    def callbacks(self) -> Callbacks:
        return Callbacks(
            on_step=self._step,
            on_checkpoint=self.checkpoints.append,
            stop=lambda: self.stop_after is not None and len(self.steps) >= self.stop_after,
        )


def _weights(adapter: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return dict(load_file(str(adapter / "adapter_model.safetensors")))


def _same(left: Path, right: Path) -> bool:
    import torch

    a, b = _weights(left), _weights(right)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _train(source: ModelSource, out: Path, recorder: Recorder, resume: Path | None = None) -> Path:
    examples = parse_training_file("\n".join(training_lines()).encode())
    outcome = train_lora(source, examples, [], HP, out, recorder.callbacks(), resume=resume)
    assert outcome.adapter is not None
    return outcome.adapter


@pytest.fixture(scope="module")
def source(tiny_model: Path) -> ModelSource:
    return ModelSource("tiny", tiny_model)


def test_example_longer_than_the_context_fails_naming_its_line(
    source: ModelSource, tmp_path: Path
) -> None:
    lines = training_lines()
    long = json.loads(lines[2])
    long["messages"][0]["content"] = "word " * 2100  # the tiny model's context is 2048
    lines[2] = json.dumps(long)
    examples = parse_training_file("\n".join(lines).encode())
    with pytest.raises(InvalidTrainingFile, match=r"line 3: the example has \d+ tokens.*2048"):
        train_lora(source, examples, [], HP, tmp_path, Recorder().callbacks())


def test_lines_with_tools_and_tool_calls_train_with_loss_on_their_calls(
    source: ModelSource, tmp_path: Path
) -> None:
    lines = training_lines()
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    agent = {
        "messages": [
            {"role": "user", "content": "Look it up."},
            {"role": "assistant", "content": None, "tool_calls": [call]},
        ],
        "tools": [tool],
    }
    lines[4] = json.dumps(agent)
    examples = parse_training_file("\n".join(lines).encode())
    recorder = Recorder()
    outcome = train_lora(source, examples, [], HP, tmp_path, recorder.callbacks())
    assert outcome.adapter is not None and recorder.steps == [1, 2, 3, 4, 5, 6]


def test_a_jobs_seed_reproduces_while_others_draw_from_the_global_generator(
    source: ModelSource, tmp_path: Path
) -> None:
    import torch

    first = _train(source, tmp_path / "first", Recorder())
    done = threading.Event()

    def draw() -> None:  # a server sampling answers, or the user's own code
        while not done.is_set():
            torch.rand(8)
            time.sleep(0.001)

    thread = threading.Thread(target=draw, daemon=True)
    thread.start()
    try:
        torch.manual_seed(99)
        second = _train(source, tmp_path / "second", Recorder())
    finally:
        done.set()
        thread.join()
    assert _same(first, second)


def test_training_resumed_from_a_checkpoint_ends_as_an_uninterrupted_run(
    source: ModelSource, tmp_path: Path
) -> None:
    uninterrupted = Recorder()
    whole = _train(source, tmp_path / "whole", uninterrupted)
    stopped = Recorder(stop_after=4)  # 12 examples in fours: the first epoch is steps 1-3
    examples = parse_training_file("\n".join(training_lines()).encode())
    outcome = train_lora(source, examples, [], HP, tmp_path / "cut", stopped.callbacks())
    assert outcome.adapter is None and [c.step for c in stopped.checkpoints] == [3]
    resumed = Recorder()
    adapter = _train(source, tmp_path / "cut", resumed, resume=stopped.checkpoints[0].path)
    assert resumed.steps == [4, 5, 6]
    assert _same(whole, adapter)
    tokens = [m.trained_tokens for m in resumed.metrics]
    assert tokens == [m.trained_tokens for m in uninterrupted.metrics[3:]]


def test_a_batch_run_in_parts_takes_the_step_the_whole_batch_takes(
    source: ModelSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from distill_server.trainer import lora

    whole_run = Recorder()
    whole = _train(source, tmp_path / "whole", whole_run)
    cuts: list[int] = []
    parts = lora._parts

    def one_by_one(batch: list[Any], most: int) -> list[list[Any]]:
        cut = parts(batch, 1)  # every example a part of its own
        cuts.append(len(cut))
        return cut

    monkeypatch.setattr(lora, "_parts", one_by_one)
    parted_run = Recorder()
    parted = _train(source, tmp_path / "parted", parted_run)
    assert cuts and set(cuts) == {HP.batch_size}
    a, b = _weights(whole), _weights(parted)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)
    for left, right in zip(whole_run.metrics, parted_run.metrics, strict=True):
        assert left.train_loss == pytest.approx(right.train_loss, rel=1e-4)
        assert left.train_mean_token_accuracy == right.train_mean_token_accuracy
        assert left.trained_tokens == right.trained_tokens


def test_parts_keep_the_order_and_stay_within_their_padded_tokens() -> None:
    from distill_server.trainer.lora import _Encoded, _parts

    batch = [_Encoded([1] * n, [1] * n) for n in (10, 30, 5, 50, 20)]
    cut = _parts(batch, 60)
    assert [e for part in cut for e in part] == batch
    assert [[len(e.ids) for e in part] for part in cut] == [[10, 30], [5], [50], [20]]
    assert _parts(batch, 10_000) == [batch]


def test_peft_wraps_a_model_in_a_thread_with_warnings_as_errors_and_no_global_change(
    tiny_model: Path,
) -> None:
    """The trainer and the engine wrap models with peft on their own threads, beside the
    user's tests. peft reads an alias transformers deprecated; with warnings as errors (this
    suite's own setting, and many users') that FutureWarning failed a training job. It must
    not be raised, and nothing process-wide (the warning filters) may change to avoid it."""
    import warnings

    from peft import LoraConfig, get_peft_model

    from distill_server.devices import Placement
    from distill_server.weights.loading import load_pretrained, quiet_peft

    _, base = load_pretrained(ModelSource("tiny", tiny_model), Placement("cpu", "float32"))
    cls = type(base)
    with pytest.raises(FutureWarning):  # the alias peft reads still warns: an error here
        _ = base.is_gradient_checkpointing
    filters = list(warnings.filters)
    wrapped: list[Any] = []
    errors: list[BaseException] = []

    def wrap() -> None:
        try:
            with quiet_peft(base):
                config = LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
                wrapped.append(get_peft_model(base, config))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=wrap)
    thread.start()
    thread.join(60)
    assert not errors, errors
    assert wrapped and type(base) is cls  # the model's own class again
    assert warnings.filters == filters


def test_a_second_load_shares_the_weights_and_wrapping_it_leaves_the_first_alone(
    tiny_model: Path,
) -> None:
    import torch

    from distill_server.models import ModelSource
    from distill_server.trainer.lora import Hyperparameters, _lora
    from distill_server.weights.loading import load_pretrained

    source = ModelSource("tiny", tiny_model)
    _, served = load_pretrained(source)
    _, trained = load_pretrained(source)
    # One copy of the base weights: the trainer's modules hold the served model's tensors.
    pairs = zip(served.state_dict().values(), trained.state_dict().values(), strict=True)
    assert all(a.data_ptr() == b.data_ptr() for a, b in pairs)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.inference_mode():
        before = served(input_ids=ids).logits
    wrapped = _lora(trained, Hyperparameters(1, 1, 1.0, 0))
    assert not any("lora" in name for name, _ in served.named_modules())
    assert all(not p.requires_grad for n, p in wrapped.named_parameters() if "lora" not in n)
    with torch.inference_mode():
        assert torch.equal(served(input_ids=ids).logits, before)
