"""LoRA supervised fine-tuning with peft; loss on assistant tokens only.

Imports torch at import time: the job runner imports this module only when a job runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pytest_distill.local.architectures import lora_targets
from pytest_distill.local.engine.loading import encode, load_pretrained, quiet_peft, render
from pytest_distill.local.models import ModelSource
from pytest_distill.training.rules import Example

BASE_LEARNING_RATE = 5e-4
MAX_TOKENS = 1024
_IGNORE = -100
DEFAULT_RANK = 16
"""vLLM's default ``--max-lora-rank``: an adapter of this rank serves without extra flags."""


@dataclass(frozen=True, slots=True)
class Hyperparameters:
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    seed: int
    lora_rank: int = DEFAULT_RANK
    lora_alpha: int | None = None
    """None: twice the rank."""
    lora_target_modules: tuple[str, ...] | list[str] | None = None
    """None: chosen from the model's architecture (``architectures.lora_targets``)."""


@dataclass(frozen=True, slots=True)
class StepMetrics:
    step: int
    total_steps: int
    train_loss: float
    train_mean_token_accuracy: float
    trained_tokens: int
    """Tokens (padding excluded) seen so far."""
    step_seconds: float
    """Time spent in training steps so far, for throughput: loading and saving excluded."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    step: int
    path: Path
    metrics: dict[str, float]


@dataclass(frozen=True, slots=True)
class Callbacks:
    """How training reports back; ``stop`` is polled before every step."""

    on_step: Callable[[StepMetrics], None]
    on_checkpoint: Callable[[Checkpoint], None]
    stop: Callable[[], bool]


@dataclass(frozen=True, slots=True)
class Outcome:
    adapter: Path | None
    """The final adapter directory; None when training stopped early."""
    trained_tokens: int
    steps: int


@dataclass(frozen=True, slots=True)
class _Encoded:
    ids: list[int]
    labels: list[int]


def tokenize_example(tokenizer: Any, example: Example) -> tuple[list[int], list[int]]:
    """Token ids and labels; labels are ``-100`` except on trained assistant turns.

    Each assistant turn is cut exactly where generation starts at inference time (the template
    with a generation prompt), so training sees the same token boundary that serving does.
    """
    messages = [{"role": _role(m.role), "content": m.content} for m in example.messages]
    ids: list[int] = []
    labels: list[int] = []
    done = ""
    for index, message in enumerate(example.messages):
        if message.role != "assistant":
            continue
        prompt = render(tokenizer, messages[:index], True) if index else ""
        full = render(tokenizer, messages[: index + 1], False)
        context = encode(tokenizer, prompt[len(done) :]) if prompt.startswith(done) else []
        answer = encode(tokenizer, full[len(prompt) :])
        ids += context + answer
        labels += [_IGNORE] * len(context) + (
            answer if message.trained else [_IGNORE] * len(answer)
        )
        done = full
    return ids[:MAX_TOKENS], labels[:MAX_TOKENS]


def train_lora(
    source: ModelSource,
    examples: Sequence[Example],
    validation: Sequence[Example],
    hp: Hyperparameters,
    out_dir: Path,
    callbacks: Callbacks,
) -> Outcome:
    """Train a LoRA adapter for ``source`` on ``examples``; checkpoints after each epoch."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(hp.seed)
    # The trainer loads its own copy of the base: the server keeps serving the loaded one,
    # and gradients or injected LoRA layers must never touch the weights being served.
    tokenizer, base = load_pretrained(source)
    config = LoraConfig(
        r=hp.lora_rank,
        lora_alpha=hp.lora_alpha or 2 * hp.lora_rank,
        lora_dropout=0.0,
        target_modules=lora_targets(base.config, hp.lora_target_modules),
    )
    with quiet_peft():
        model = get_peft_model(base, config)
    train = [_Encoded(*tokenize_example(tokenizer, e)) for e in examples]
    valid = [_Encoded(*tokenize_example(tokenizer, e)) for e in validation]
    pad = int(tokenizer.pad_token_id)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=BASE_LEARNING_RATE * hp.learning_rate_multiplier)
    loop = _Loop(model, optimizer, pad, hp, callbacks, math.ceil(len(train) / hp.batch_size))
    for _ in range(hp.n_epochs):
        if not loop.epoch(train):
            return Outcome(None, loop.tokens, loop.step)
        metrics = {"step": float(loop.step), **loop.last}
        if valid:
            metrics["valid_loss"] = _mean_loss(model, valid, pad, hp.batch_size)
        callbacks.on_checkpoint(Checkpoint(loop.step, _save(model, out_dir, loop.step), metrics))
    return Outcome(_save(model, out_dir, None), loop.tokens, loop.step)


class _Loop:
    def __init__(
        self, model: Any, optimizer: Any, pad: int, hp: Hyperparameters, cb: Callbacks, per: int
    ) -> None:
        self.model, self.optimizer, self.pad, self.hp, self.cb = model, optimizer, pad, hp, cb
        self.total = per * hp.n_epochs
        self.step = 0
        self.tokens = 0
        self.seconds = 0.0
        self.last: dict[str, float] = {}
        self.order = torch.Generator().manual_seed(hp.seed)

    def epoch(self, train: list[_Encoded]) -> bool:
        """One pass over ``train``; False when asked to stop."""
        self.model.train()
        order = torch.randperm(len(train), generator=self.order).tolist()
        for start in range(0, len(order), self.hp.batch_size):
            if self.cb.stop():
                return False
            batch = [train[i] for i in order[start : start + self.hp.batch_size]]
            began = time.perf_counter()
            loss, accuracy = self._step(batch)
            self.seconds += time.perf_counter() - began
            self.step += 1
            self.last = {"train_loss": loss, "train_mean_token_accuracy": accuracy}
            metrics = StepMetrics(
                self.step, self.total, loss, accuracy, self.tokens, round(self.seconds, 3)
            )
            self.cb.on_step(metrics)
        return True

    def _step(self, batch: list[_Encoded]) -> tuple[float, float]:
        ids, labels, mask = _collate(batch, self.pad, self.model.get_base_model().device)
        loss, accuracy = _loss(self.model, ids, labels, mask)
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.tokens += int(mask.sum())
        return float(loss.detach()), accuracy


def _collate(
    batch: list[_Encoded], pad: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(e.ids) for e in batch)
    ids = [e.ids + [pad] * (width - len(e.ids)) for e in batch]
    labels = [e.labels + [_IGNORE] * (width - len(e.labels)) for e in batch]
    mask = [[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in batch]

    def tensor(rows: list[list[int]]) -> torch.Tensor:
        return torch.tensor(rows, device=device)

    return tensor(ids), tensor(labels), tensor(mask)


def _loss(
    model: Any, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """Mean next-token cross-entropy over labelled tokens, and their greedy accuracy.

    The output head runs only where a label is scored: with SmolLM2's 49k vocabulary the full
    logits would be a fifth of the compute and most of the memory, for prompt tokens whose
    loss is thrown away.
    """
    causal_lm = model.get_base_model()
    hidden = causal_lm.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    target = labels[:, 1:]
    scored = target != _IGNORE
    if not scored.any():  # every assistant turn in the batch has weight 0
        return hidden.sum() * 0.0, 0.0
    logits = causal_lm.get_output_embeddings()(hidden[:, :-1][scored]).float()
    loss = torch.nn.functional.cross_entropy(logits, target[scored])
    accuracy = float((logits.detach().argmax(-1) == target[scored]).float().mean())
    return loss, accuracy


@torch.no_grad()
def _mean_loss(model: Any, examples: list[_Encoded], pad: int, batch_size: int) -> float:
    model.eval()
    losses = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        ids, labels, mask = _collate(batch, pad, model.get_base_model().device)
        losses.append(float(_loss(model, ids, labels, mask)[0]))
    return sum(losses) / len(losses)


def _save(model: Any, out_dir: Path, step: int | None) -> Path:
    path = out_dir / ("final" if step is None else f"step-{step}")
    model.save_pretrained(str(path))
    return path


def _role(role: str) -> str:
    # Chat templates written before the `developer` role know it as `system`.
    return "system" if role == "developer" else role
