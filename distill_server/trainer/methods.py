"""DPO and grader-rewarded RL on a LoRA adapter, with TRL's ``DPOTrainer`` and ``GRPOTrainer``.

Both train the LoRA adapter of the job's starting model: the adapter of a fine-tuned model
(``ft:...``) goes on training as the one trained, or a fresh one (drawn from the job's seed, as
for supervised jobs) on a base. DPO's reference is the starting model: TRL copies the starting
adapter into a frozen ``ref`` adapter of the same model (``DPOTrainer`` does this for a
``PeftModel`` given without a ``ref_model``), so one copy of the base weights serves both; on a
base, that copy is the zero adapter, i.e. the base. RL (GRPO) uses TRL's default ``beta=0``:
no reference model, no KL term.

RL first samples every prompt with the starting model and keeps only those whose pass rate is
strictly between 0 and 1 (all passing or all failing, every sample gets the same advantage:
nothing to learn); which prompts are kept is saved with the job's adapters, so a resumed job
trains on the same ones.

Progress, metrics, checkpoints (each epoch), stopping and resuming go through the same
``Callbacks`` as supervised training (``lora.py``); a checkpoint is TRL's (the Trainer's)
folder, marked resumable by ``models.OPTIMIZER_STATE`` once complete.

Server-side knobs (not in OpenAI's body): ``RL_MAX_COMPLETION_TOKENS`` per sampled answer,
``RL_TEMPERATURE``, and the samples per prompt, ``samples_per_prompt(compute_multiplier)``.
Imports torch at import time and TRL when a job runs: the job runner imports this module only
when a DPO or RL job runs.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from distill_server.models import OPTIMIZER_STATE, ModelSource
from distill_server.trainer import checkpoints
from distill_server.trainer.lora import (
    Callbacks,
    Checkpoint,
    Hyperparameters,
    Outcome,
    StepMetrics,
    Stopped,
    _lora,
    _message,
    continued,
)
from distill_server.trainer.rewards import Rewarder
from distill_server.weights.loading import encode, load_pretrained, render
from distill_shapes.preference import PreferencePair
from distill_shapes.reinforcement import GraderJson, RewardPrompt

DPO_BASE_LEARNING_RATE = 1e-4
RL_BASE_LEARNING_RATE = 1e-4
RL_MAX_COMPLETION_TOKENS = 64
"""Tokens per sampled answer: short answers keep CPU generation to seconds a step."""
RL_TEMPERATURE = 1.0
SAMPLES_PER_PROMPT = 4
"""Samples per prompt at ``compute_multiplier`` 1 (``auto``)."""


def samples_per_prompt(compute_multiplier: float) -> int:
    """Samples per prompt: ``SAMPLES_PER_PROMPT`` times ``compute_multiplier``, rounded, from 2
    (GRPO compares samples of one prompt) to 16."""
    return max(2, min(16, round(SAMPLES_PER_PROMPT * compute_multiplier)))


class NoUsablePrompts(ValueError):
    """RL found no prompt the starting model sometimes passes and sometimes fails."""


@dataclass(frozen=True, slots=True)
class MethodHyperparameters:
    n_epochs: int
    batch_size: int
    """DPO: pairs a step; RL: prompts a step (each sampled ``samples`` times)."""
    learning_rate_multiplier: float
    seed: int
    beta: float = 0.1
    samples: int = SAMPLES_PER_PROMPT


def train_dpo(
    source: ModelSource,
    adapter: Path | None,
    pairs: Sequence[PreferencePair],
    hp: MethodHyperparameters,
    out_dir: Path,
    callbacks: Callbacks,
    resume: Path | None = None,
) -> Outcome:
    """Train the starting model's adapter on preference ``pairs`` with TRL's ``DPOTrainer``."""
    from datasets import Dataset, disable_progress_bars
    from trl.trainer.dpo_config import DPOConfig
    from trl.trainer.dpo_trainer import DPOTrainer

    disable_progress_bars()  # the server's log is no place for TRL's dataset progress bars
    tokenizer, model = _start(source, adapter, hp)
    rows = []
    for index, pair in enumerate(pairs):
        if index % 16 == 0 and callbacks.stop():
            return Outcome(None, 0, 0)
        rows.append(_pair_row(tokenizer, pair))
    with _quiet():
        config = DPOConfig(
            **_common(out_dir, model, hp, DPO_BASE_LEARNING_RATE, hp.batch_size),
            beta=hp.beta,
            max_length=None,
            precompute_ref_log_probs=False,
        )
        trainer = DPOTrainer(
            model=model,
            args=config,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
    return _run(trainer, model, out_dir, callbacks, resume, _dpo_metrics)


def train_rl(
    source: ModelSource,
    adapter: Path | None,
    prompts: Sequence[RewardPrompt],
    grader: GraderJson,
    hp: MethodHyperparameters,
    out_dir: Path,
    callbacks: Callbacks,
    resume: Path | None = None,
    on_usable: Callable[[int, int], None] = lambda used, of: None,
) -> Outcome:
    """Train the starting model's adapter with TRL's ``GRPOTrainer``, rewarded by ``grader``
    (the plugin's graders, ``rewards.py``) on the prompts it sometimes passes.

    Raises ``NoUsablePrompts`` when there are none; ``on_usable(used, of)`` says how many."""
    from datasets import Dataset, disable_progress_bars
    from trl.trainer.grpo_config import GRPOConfig
    from trl.trainer.grpo_trainer import GRPOTrainer

    disable_progress_bars()
    rewarder = Rewarder(grader)
    tokenizer, model = _start(source, adapter, hp)
    texts = [_prompt_text(tokenizer, prompt) for prompt in prompts]
    kept = _usable(model, tokenizer, texts, prompts, rewarder, hp, out_dir, callbacks.stop)
    on_usable(len(kept), len(prompts))
    if not kept:
        raise NoUsablePrompts(
            f"none of the {len(prompts)} prompts has a pass rate strictly between 0 and 1 "
            f"under the starting model ({hp.samples} samples each): every sample of a prompt "
            "passed, or every one failed, so no answer is better than another. Give prompts the "
            "model sometimes gets right (or fine-tune it with the supervised method first)."
        )
    passes: list[float] = []

    def reward(completions: list[str], index: list[int], **_: Any) -> list[float]:
        pairs = zip(completions, index, strict=True)
        scored = [rewarder.score(text, prompts[i]) for text, i in pairs]
        passes[:] = [float(s.passed) for s in scored]
        return [s.reward for s in scored]

    reward.__name__ = "grader"
    dataset = Dataset.from_list([{"prompt": texts[i], "index": i} for i in kept])
    per_step = min(hp.batch_size, len(kept))
    with _quiet():
        config = GRPOConfig(
            **_common(out_dir, model, hp, RL_BASE_LEARNING_RATE, per_step * hp.samples),
            num_generations=hp.samples,
            max_completion_length=RL_MAX_COMPLETION_TOKENS,
            temperature=RL_TEMPERATURE,
            beta=0.0,
            remove_unused_columns=False,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[cast(Any, reward)],
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
        )

    def metrics(logs: dict[str, float]) -> tuple[float, dict[str, float]]:
        rate = sum(passes) / len(passes) if passes else 0.0
        extra = {"reward": float(logs.get("reward", 0.0)), "pass_rate": rate}
        return rate, extra

    return _run(trainer, model, out_dir, callbacks, resume, metrics)


def _start(source: ModelSource, adapter: Path | None, hp: MethodHyperparameters) -> tuple[Any, Any]:
    """The tokenizer and the model to train: the starting adapter, trainable, or a fresh one."""
    tokenizer, base = load_pretrained(source)
    if adapter is None:
        lora_hp = Hyperparameters(hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier, hp.seed)
        return tokenizer, _lora(base, lora_hp)
    return tokenizer, continued(base, adapter)


def _common(
    out_dir: Path, model: Any, hp: MethodHyperparameters, base_lr: float, per_device: int
) -> dict[str, Any]:
    return {
        "output_dir": str(out_dir),
        "per_device_train_batch_size": per_device,
        "gradient_accumulation_steps": 1,
        "num_train_epochs": hp.n_epochs,
        "learning_rate": base_lr * hp.learning_rate_multiplier,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "logging_steps": 1,
        "save_strategy": "epoch",
        "report_to": [],
        "seed": hp.seed,
        "data_seed": hp.seed,
        "use_cpu": model.get_base_model().device.type == "cpu",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "bf16": model.get_base_model().dtype == torch.bfloat16,
        "fp16": model.get_base_model().dtype == torch.float16,
    }


def _run(
    trainer: Any,
    model: Any,
    out_dir: Path,
    callbacks: Callbacks,
    resume: Path | None,
    metrics: Callable[[dict[str, float]], tuple[float, dict[str, float]]],
) -> Outcome:
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    bridge = _bridge(callbacks, out_dir, metrics)
    trainer.remove_callback(PrinterCallback)  # the job's events carry the steps, not stdout
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(bridge)
    if callbacks.stop():
        return Outcome(None, 0, 0)
    with _quiet():
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    steps = int(trainer.state.global_step)
    if bridge.stopped:
        return Outcome(None, bridge.tokens, steps)
    if "ref" in model.peft_config:  # DPO's frozen copy of the starting adapter
        model.delete_adapter("ref")
    return Outcome(checkpoints.save(model, out_dir / "final"), bridge.tokens, steps)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """TRL, transformers and datasets warn about settings and deprecations (the Trainer's
    ``gradient_checkpointing``): nothing a job's user can act on, and never a job's failure."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _bridge(
    callbacks: Callbacks,
    out_dir: Path,
    metrics: Callable[[dict[str, float]], tuple[float, dict[str, float]]],
) -> Any:
    """A Trainer callback that reports steps and checkpoints and stops when asked."""
    from transformers import TrainerCallback

    class Bridge(TrainerCallback):
        def __init__(self) -> None:
            self.stopped = False
            self.tokens = 0
            self.seconds = 0.0
            self.began = 0.0
            self.last: dict[str, float] = {}

        def _look(self, control: Any) -> None:
            if callbacks.stop():
                self.stopped = True
                control.should_training_stop = True
                control.should_save = False

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if state.global_step and (out_dir / f"step-{state.global_step}").is_dir():
                self.seconds = _seconds(out_dir / f"step-{state.global_step}")

        def on_step_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self._look(control)
            self.began = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.seconds += time.perf_counter() - self.began
            self._look(control)

        def on_epoch_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self._look(control)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            if not logs or "loss" not in logs or "train_runtime" in logs:
                return
            self.tokens = int(state.num_input_tokens_seen or logs.get("num_tokens", 0))
            accuracy, extra = metrics(logs)
            self.last = {"train_loss": float(logs["loss"]), "train_mean_token_accuracy": accuracy}
            callbacks.on_step(
                StepMetrics(
                    state.global_step,
                    state.max_steps,
                    float(logs["loss"]),
                    accuracy,
                    self.tokens,
                    round(self.seconds, 3),
                    extra,
                )
            )

        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            saved = out_dir / f"checkpoint-{state.global_step}"
            if not saved.is_dir():
                return
            path = out_dir / f"step-{state.global_step}"
            shutil.rmtree(path, ignore_errors=True)
            saved.rename(path)
            # Written last: a folder without it (a kill mid-save) is never resumed from.
            marker = {"trainer": "trl", "seconds": self.seconds}
            (path / OPTIMIZER_STATE).write_text(json.dumps(marker))
            point = {"step": float(state.global_step), **self.last}
            callbacks.on_checkpoint(Checkpoint(state.global_step, path, point))

    return Bridge()


def _seconds(path: Path) -> float:
    try:
        return float(json.loads((path / OPTIMIZER_STATE).read_text())["seconds"])
    except (OSError, ValueError, KeyError):
        return 0.0


def _dpo_metrics(logs: dict[str, float]) -> tuple[float, dict[str, float]]:
    extra = {
        "reward_margin": float(logs.get("rewards/margins", 0.0)),
        "rewards_chosen": float(logs.get("rewards/chosen", 0.0)),
        "rewards_rejected": float(logs.get("rewards/rejected", 0.0)),
    }
    return float(logs.get("rewards/accuracies", 0.0)), extra


def _prompt_text(tokenizer: Any, prompt: RewardPrompt) -> str:
    tools = [tool.to_json() for tool in prompt.tools]
    return render(tokenizer, [_message(m) for m in prompt.messages], True, tools)


def _pair_row(tokenizer: Any, pair: PreferencePair) -> dict[str, str]:
    """A pair as TRL's standard (text) DPO row, rendered as serving renders it: the prompt
    with the generation prompt, each answer as the template writes it (ending in the end of
    turn, which TRL would otherwise add again)."""
    messages = [_message(m) for m in pair.messages]
    tools = [tool.to_json() for tool in pair.tools]
    prompt = render(tokenizer, messages, True, tools)

    def answer(message: Any) -> str:
        full = render(tokenizer, [*messages, _message(message)], False, tools)
        text = full[len(prompt) :] if full.startswith(prompt) else full
        eos = str(tokenizer.eos_token or "")
        stripped = text.rstrip()
        return stripped if eos and stripped.endswith(eos) else text

    return {"prompt": prompt, "chosen": answer(pair.chosen), "rejected": answer(pair.rejected)}


def _usable(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    prompts: Sequence[RewardPrompt],
    rewarder: Rewarder,
    hp: MethodHyperparameters,
    out_dir: Path,
    stop: Callable[[], bool],
) -> list[int]:
    """The indices of the prompts whose samples from the starting model pass at a rate
    strictly between 0 and 1; computed once per job and kept in ``out_dir``."""
    saved = out_dir / "usable_prompts.json"
    if saved.is_file():
        return [int(i) for i in json.loads(saved.read_text())]
    device = model.get_base_model().device
    kept = []
    model.eval()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(hp.seed)
        for index, text in enumerate(texts):
            if stop():
                raise Stopped
            ids = torch.tensor([encode(tokenizer, text)], device=device)
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=RL_TEMPERATURE,
                top_k=0,
                max_new_tokens=RL_MAX_COMPLETION_TOKENS,
                num_return_sequences=hp.samples,
                pad_token_id=tokenizer.pad_token_id,
            )
            answers = tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
            passed = sum(rewarder.score(a, prompts[index]).passed for a in answers)
            if 0 < passed < len(answers):
                kept.append(index)
    out_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(kept))
    return kept
