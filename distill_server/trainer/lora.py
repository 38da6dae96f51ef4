"""LoRA supervised fine-tuning with peft; loss on assistant tokens only.

Imports torch at import time: the job runner imports this module only when a job runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from distill_server.architectures import context_limit, lora_targets
from distill_server.models import ModelSource
from distill_server.trainer import checkpoints
from distill_server.trainer.checkpoints import Progress
from distill_server.weights.loading import encode, load_pretrained, quiet_peft, render
from distill_shapes.training import Example, Message, too_long

BASE_LEARNING_RATE = 5e-4
PART_TOKENS = 256
"""Padded tokens a training step's forward and backward pass hold at once (``_Loop._step``):
with SmolLM2-135M, about 1.2 MB of activations a token."""
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
    extra: Mapping[str, float] = field(default_factory=dict)
    """A method's own metrics: DPO's ``reward_margin``, ``rewards_chosen`` and
    ``rewards_rejected``; RL's ``reward`` (mean) and ``pass_rate``."""


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

    @property
    def scored(self) -> int:
        """Labelled tokens: those the loss scores (each predicted from the one before)."""
        return sum(label != _IGNORE for label in self.labels[1:])


def tokenize_example(tokenizer: Any, example: Example) -> tuple[list[int], list[int]]:
    """Token ids and labels; labels are ``-100`` except on trained assistant turns.

    Each assistant turn is cut exactly where generation starts at inference time (the template
    with a generation prompt), so training sees the same token boundary that serving does.
    Tools and tool calls are rendered as serving renders them (``chat_format``).
    """
    messages = [_message(m) for m in example.messages]
    tools = [tool.to_json() for tool in example.tools]
    ids: list[int] = []
    labels: list[int] = []
    done = ""
    for index, message in enumerate(example.messages):
        if message.role != "assistant":
            continue
        prompt = render(tokenizer, messages[:index], True, tools) if index else ""
        full = render(tokenizer, messages[: index + 1], False, tools)
        context = encode(tokenizer, prompt[len(done) :]) if prompt.startswith(done) else []
        answer = encode(tokenizer, full[len(prompt) :])
        ids += context + answer
        labels += [_IGNORE] * len(context) + (
            answer if message.trained else [_IGNORE] * len(answer)
        )
        done = full
    return ids, labels


class Stopped(Exception):
    """Raised where a job is asked to stop before its first step (reading, tokenizing)."""


STOP_EVERY = 16
"""Examples tokenized between two looks at ``Callbacks.stop``."""


def _encoded(
    tokenizer: Any, examples: Sequence[Example], limit: int, stop: Callable[[], bool]
) -> list[_Encoded]:
    """Every example tokenized; one longer than ``limit`` fails naming its line, since
    cutting it would train on a conversation without the end of its answer. Raises
    ``Stopped`` when ``stop`` says so: a large file takes minutes."""
    encoded = []
    for index, example in enumerate(examples):
        if index % STOP_EVERY == 0 and stop():
            raise Stopped
        ids, labels = tokenize_example(tokenizer, example)
        if len(ids) > limit:
            raise too_long(example, len(ids), limit)
        encoded.append(_Encoded(ids, labels))
    return encoded


def train_lora(
    source: ModelSource,
    examples: Sequence[Example],
    validation: Sequence[Example],
    hp: Hyperparameters,
    out_dir: Path,
    callbacks: Callbacks,
    resume: Path | None = None,
    start: Path | None = None,
) -> Outcome:
    """Train a LoRA adapter for ``source`` on ``examples``; checkpoints after each epoch.

    With ``start`` (a fine-tuned model's adapter), that adapter trains on, with its own LoRA
    settings; without it, a fresh adapter is drawn from the job's seed.

    With ``resume`` (a checkpoint this function saved), training goes on from that checkpoint's
    step with its weights, optimizer and data order: the result is the one an uninterrupted
    run gives. Raises ``InvalidTrainingFile`` naming the line of an example longer than the
    model's context. Uses its own generators only, never torch's global random state.
    """
    # The trainer gets a model of its own modules (the server keeps serving its own, and
    # injected LoRA layers must never reach it), around the served model's weight tensors
    # when it has one loaded (``load_pretrained``): one copy of the base weights in memory,
    # which the trainer only reads (they are frozen; only the LoRA layers learn).
    tokenizer, base = load_pretrained(source)
    context = context_limit(base.config)
    try:
        train = _encoded(tokenizer, examples, context, callbacks.stop)
        valid = _encoded(tokenizer, validation, context, callbacks.stop)
    except Stopped:
        return Outcome(None, 0, 0)
    model = _lora(base, hp) if start is None else continued(base, start)
    pad = int(tokenizer.pad_token_id)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=BASE_LEARNING_RATE * hp.learning_rate_multiplier)
    loop = _Loop(model, optimizer, pad, hp, callbacks, math.ceil(len(train) / hp.batch_size))
    if resume is not None:
        loop.resume(checkpoints.restore(model, optimizer, loop.order, resume))
    while loop.epochs < hp.n_epochs:
        if not loop.epoch(train):
            return Outcome(None, loop.tokens, loop.step)
        metrics = {"step": float(loop.step), **loop.last}
        if valid:
            metrics["valid_loss"] = _mean_loss(model, valid, pad, hp.batch_size)
        path = checkpoints.save(model, out_dir / f"step-{loop.step}", loop.state())
        callbacks.on_checkpoint(Checkpoint(loop.step, path, metrics))
    return Outcome(checkpoints.save(model, out_dir / "final"), loop.tokens, loop.step)


def _lora(base: Any, hp: Hyperparameters) -> Any:
    """``base`` with fresh LoRA layers, drawn from a generator seeded with the job's seed.

    peft draws its initial weights from torch's global random state, which other threads
    (a server sampling answers, another job) draw from too: a job's seed would not
    reproduce. The weights are drawn again here, as peft draws them, from the job's own.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=hp.lora_rank,
        lora_alpha=hp.lora_alpha or 2 * hp.lora_rank,
        lora_dropout=0.0,
        target_modules=lora_targets(base.config, hp.lora_target_modules),
    )
    with quiet_peft(base):
        model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(hp.seed)  # a CPU generator, whatever the device
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            if ".lora_A." in name:
                drawn = torch.empty(parameter.shape, dtype=parameter.dtype)
                torch.nn.init.kaiming_uniform_(drawn, a=math.sqrt(5), generator=generator)
                parameter.copy_(drawn)
            elif ".lora_B." in name:
                torch.nn.init.zeros_(parameter)
    return model


def continued(base: Any, adapter: Path) -> Any:
    """``base`` with a fine-tuned model's LoRA adapter loaded to train on."""
    from peft import PeftModel

    with quiet_peft(base):
        return PeftModel.from_pretrained(base, str(adapter), is_trainable=True)


class _Loop:
    def __init__(
        self, model: Any, optimizer: Any, pad: int, hp: Hyperparameters, cb: Callbacks, per: int
    ) -> None:
        self.model, self.optimizer, self.pad, self.hp, self.cb = model, optimizer, pad, hp, cb
        self.total = per * hp.n_epochs
        self.step = 0
        self.epochs = 0
        self.tokens = 0
        self.seconds = 0.0
        self.last: dict[str, float] = {}
        self.order = torch.Generator().manual_seed(hp.seed)

    def resume(self, progress: Progress) -> None:
        self.step, self.epochs = progress.step, progress.epochs
        self.tokens, self.seconds = progress.tokens, progress.seconds

    def state(self) -> dict[str, Any]:
        progress = Progress(self.step, self.epochs, self.tokens, self.seconds)
        return checkpoints.state(self.optimizer, self.order, progress)

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
        self.epochs += 1
        return True

    def _step(self, batch: list[_Encoded]) -> tuple[float, float]:
        """One optimizer step on ``batch``: the mean loss over its labelled tokens.

        The batch runs in parts of at most ``PART_TOKENS`` padded tokens, each part's
        backward pass adding its share of the batch's gradient (its labelled tokens' loss
        over the batch's): the same step, with the activations of one part in memory at a
        time rather than the whole batch's.
        """
        device = self.model.get_base_model().device
        scored = sum(e.scored for e in batch)
        total, right = 0.0, 0
        for part in _parts(batch, PART_TOKENS):
            ids, labels, mask = _collate(part, self.pad, device)
            loss_sum, correct = _loss_sum(self.model, ids, labels, mask)
            (loss_sum / max(scored, 1)).backward()  # type: ignore[no-untyped-call]
            total += float(loss_sum.detach())
            right += correct
            self.tokens += int(mask.sum())
        self.optimizer.step()
        self.optimizer.zero_grad()
        return total / max(scored, 1), right / scored if scored else 0.0


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


def _parts(batch: list[_Encoded], most: int) -> list[list[_Encoded]]:
    """``batch`` cut, in order, into parts of at most ``most`` tokens once padded to each
    part's longest (at least one example a part)."""
    parts: list[list[_Encoded]] = []
    width = 0
    for example in batch:
        width_then = max(width, len(example.ids))
        if parts and width_then * (len(parts[-1]) + 1) <= most:
            parts[-1].append(example)
            width = width_then
        else:
            parts.append([example])
            width = len(example.ids)
    return parts


def _loss_sum(
    model: Any, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over labelled tokens, and how many of them the
    model's greedy pick gets right.

    The output head runs only where a label is scored: with SmolLM2's 49k vocabulary the full
    logits would be a fifth of the compute and most of the memory, for prompt tokens whose
    loss is thrown away.
    """
    causal_lm = model.get_base_model()
    hidden = causal_lm.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    target = labels[:, 1:]
    scored = target != _IGNORE
    if not scored.any():  # every assistant turn here has weight 0
        return hidden.sum() * 0.0, 0
    logits = causal_lm.get_output_embeddings()(hidden[:, :-1][scored]).float()
    loss = torch.nn.functional.cross_entropy(logits, target[scored], reduction="sum")
    return loss, int((logits.detach().argmax(-1) == target[scored]).sum())


@torch.no_grad()
def _mean_loss(model: Any, examples: list[_Encoded], pad: int, batch_size: int) -> float:
    model.eval()
    losses = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        ids, labels, mask = _collate(batch, pad, model.get_base_model().device)
        loss_sum, _ = _loss_sum(model, ids, labels, mask)
        losses.append(float(loss_sum) / max(sum(e.scored for e in batch), 1))
    return sum(losses) / len(losses)


def _message(message: Message) -> dict[str, Any]:
    item: dict[str, Any] = {"role": _role(message.role), "content": message.content}
    if message.tool_calls:
        item["tool_calls"] = [call.to_json() for call in message.tool_calls]
    if message.tool_call_id is not None:
        item["tool_call_id"] = message.tool_call_id
    return item


def _role(role: str) -> str:
    # Chat templates written before the `developer` role know it as `system`.
    return "system" if role == "developer" else role
