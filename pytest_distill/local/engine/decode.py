"""Runs one base model with transformers: batched, left-padded decoding, adapters on demand.

This module imports torch and transformers at import time; only the batcher imports it,
lazily, so that ``import pytest_distill.local`` stays cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from pytest_distill.local.architectures import context_limit
from pytest_distill.local.engine.loading import encode, load_pretrained, quiet_peft, render
from pytest_distill.local.errors import ApiError
from pytest_distill.local.models import ModelSource


@dataclass(frozen=True, slots=True)
class GenRequest:
    """One chat request, as the batcher hands it to the engine."""

    messages: tuple[dict[str, str], ...]
    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GenResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    batch_size: int
    """How many requests were decoded together with this one (itself included)."""


@dataclass(slots=True)
class _Row:
    request: GenRequest
    prompt: list[int]
    limit: int
    generator: torch.Generator | None
    tokens: list[int]
    cut_text: str | None = None
    """The text up to a stop sequence, once one appeared."""
    finish: str | None = None
    batch_size: int = 0


class Engine:
    """A loaded base model plus the LoRA adapters loaded onto it so far."""

    def __init__(self, source: ModelSource) -> None:
        self.source = source
        self.tokenizer, self.base = load_pretrained(source)
        self._peft: Any = None
        self._eos = _eos_ids(self.tokenizer, self.base)
        self._context = context_limit(self.base.config)
        self.device = self.base.device

    def generate(
        self, adapter: Path | None, requests: Sequence[GenRequest]
    ) -> list[GenResult | ApiError]:
        """Decode ``requests`` in left-padded batches on the base or ``adapter``.

        Requests whose prompts start the same way (the same system message and few-shot
        turns) are decoded together, sharing that prefix; the rest form one more batch. A
        request that cannot run (its prompt overflows the context) gets its error back in its
        place instead of failing the batch.
        """
        prepared = [self._prepare(request) for request in requests]
        rows = [row for row in prepared if isinstance(row, _Row)]
        if rows:
            with self._model(adapter) as model, torch.inference_mode():
                for group in _by_leading_messages(rows):
                    self._decode(model, group)
        return [row if isinstance(row, ApiError) else self._result(row) for row in prepared]

    def _prepare(self, request: GenRequest) -> _Row | ApiError:
        try:
            return self._row(request)
        except ApiError as error:
            return error

    def _row(self, request: GenRequest) -> _Row:
        prompt = encode(self.tokenizer, render(self.tokenizer, request.messages, True))
        room = self._context - len(prompt)
        if room < 1:
            raise ApiError(
                400,
                f"The prompt has {len(prompt)} tokens; this model's context is {self._context}.",
                param="messages",
                code="context_length_exceeded",
            )
        limit = min(room, request.max_tokens or 256)
        generator = None
        if request.temperature > 0:
            generator = torch.Generator()
            generator.manual_seed(request.seed if request.seed is not None else _fresh_seed())
        return _Row(request, prompt, limit, generator, [])

    @contextlib.contextmanager
    def _model(self, adapter: Path | None) -> Iterator[Any]:
        if adapter is None:
            if self._peft is None:
                yield self.base
            else:
                with self._peft.disable_adapter():
                    yield self._peft
            return
        self._peft_with(adapter).set_adapter(_adapter_name(adapter))
        yield self._peft

    def _peft_with(self, adapter: Path) -> Any:
        from peft import PeftModel

        name = _adapter_name(adapter)
        if self._peft is None:
            with quiet_peft():
                self._peft = PeftModel.from_pretrained(self.base, str(adapter), adapter_name=name)
            self._peft.eval()
        elif name not in self._peft.peft_config:
            self._peft.load_adapter(str(adapter), adapter_name=name)
        return self._peft

    def _decode(self, model: Any, rows: list[_Row]) -> None:
        for row in rows:
            row.batch_size = len(rows)
        pad = int(self.tokenizer.pad_token_id)
        shared = _shared_prefix([row.prompt for row in rows])
        past = Cache(layer_class_to_replicate=_RoomyLayer)
        if shared:
            # The rows start with the same tokens (a few-shot prompt, a long system message):
            # that prefix is run once and its KV cache copied to every row, so a batch pays for
            # it once instead of once per row. The rest of each prompt is left-padded after
            # it; the mask hides the padding wherever it sits.
            prefix = torch.tensor([shared], device=self.device)
            model(input_ids=prefix, cache=past, use_cache=True, logits_to_keep=1)
            past.batch_repeat_interleave(len(rows))
        rests = [row.prompt[len(shared) :] for row in rows]
        width = max(len(rest) for rest in rests)
        ids = torch.tensor(
            [[pad] * (width - len(rest)) + rest for rest in rests], device=self.device
        )
        mask = torch.tensor(
            [[1] * len(shared) + [0] * (width - len(rest)) + [1] * len(rest) for rest in rests],
            device=self.device,
        )
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, len(shared) :]
        for _ in range(max(row.limit for row in rows)):
            out = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                cache=past,
                use_cache=True,
                logits_to_keep=1,
            )
            past = out.cache
            chosen = self._choose(out.logits[:, -1, :].float(), rows)
            for row, token in zip(rows, chosen, strict=True):
                self._append(row, token)
            keep = [k for k, row in enumerate(rows) if not row.finish]
            if not keep:
                return
            if len(keep) < len(rows):
                # Finished rows leave the batch (and the KV cache): decoding them on until the
                # longest answer ends would waste most of a batch with uneven lengths.
                index = torch.tensor(keep, device=self.device)
                past.batch_select_indices(index)
                rows, chosen = [rows[k] for k in keep], [chosen[k] for k in keep]
                mask, positions = mask[index], positions[index]
            ids = torch.tensor(chosen, device=self.device).unsqueeze(1)
            mask = torch.cat([mask, torch.ones_like(ids)], dim=1)
            positions = positions[:, -1:] + 1

    def _choose(self, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        greedy = logits.argmax(dim=-1).tolist()
        return [
            # Sampling runs on the CPU: a row's seeded generator is a CPU one.
            int(token) if row.generator is None else _sample(logit.cpu(), row)
            for row, token, logit in zip(rows, greedy, logits, strict=True)
        ]

    def _append(self, row: _Row, token: int) -> None:
        if row.finish:
            return
        row.tokens.append(token)
        if token in self._eos:
            row.finish = "stop"
            return
        if row.request.stop:
            text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
            cut = [text.find(s) for s in row.request.stop if s and s in text]
            if cut:
                row.cut_text, row.finish = text[: min(cut)], "stop"
                return
        if len(row.tokens) >= row.limit:
            row.finish = "length"

    def _result(self, row: _Row) -> GenResult:
        text = row.cut_text
        if text is None:
            text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        finish = row.finish or "length"
        return GenResult(text, len(row.prompt), len(row.tokens), finish, row.batch_size)


class _RoomyLayer(DynamicLayer):  # type: ignore[no-untyped-call]  # transformers is untyped
    """A KV cache layer that writes each step into room it set aside.

    transformers' ``DynamicLayer`` concatenates on every decoding step, copying the whole cache
    into a fresh allocation: with 32 rows of a few hundred prompt tokens, a profile of a fresh
    process put 39% of a step in that copying (``benchmarks/bench_shared_prefix.py``, in a warm
    process, measures about 9% of a batch). This one copies only when its room runs out.
    """

    ROOM = 64

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self._used = 0
            self._key_room = self._value_room = key_states[..., :0, :]
        used, size = self._used, self._used + key_states.shape[-2]
        if size > self._key_room.shape[-2]:
            self._key_room = self._grown(self._key_room, key_states, size + self.ROOM)
            self._value_room = self._grown(self._value_room, value_states, size + self.ROOM)
        self._key_room[..., used:size, :] = key_states
        self._value_room[..., used:size, :] = value_states
        self._used = size
        return self._view()

    def _grown(self, room: torch.Tensor, states: torch.Tensor, length: int) -> torch.Tensor:
        grown = states.new_empty((*states.shape[:-2], length, states.shape[-1]))
        grown[..., : self._used, :] = room[..., : self._used, :]
        return grown

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._key_room = self._key_room.repeat_interleave(repeats, dim=0)
        self._value_room = self._value_room.repeat_interleave(repeats, dim=0)
        self._view()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._key_room, self._value_room = self._key_room[indices], self._value_room[indices]
        self._view()

    def _view(self) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self._key_room[..., : self._used, :], self._value_room[..., : self._used, :]
        self.keys, self.values = keys, values
        return keys, values


def _sample(logits: torch.Tensor, row: _Row) -> int:
    probs = torch.softmax(logits / row.request.temperature, dim=-1)
    if row.request.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < row.request.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=row.generator).item())


def _by_leading_messages(rows: list[_Row]) -> list[list[_Row]]:
    """Rows grouped by all but their last message; rows alone in their group go together."""
    groups: dict[tuple[tuple[tuple[str, str], ...], ...], list[_Row]] = {}
    for row in rows:
        lead = tuple(tuple(sorted(m.items())) for m in row.request.messages[:-1])
        groups.setdefault(lead, []).append(row)
    shared = [group for group in groups.values() if len(group) > 1]
    single = [group[0] for group in groups.values() if len(group) == 1]
    return [*shared, single] if single else shared


MIN_SHARED_PREFIX = 32
"""Shorter common prefixes (a chat template's first tokens) are not worth a separate pass."""


def _shared_prefix(prompts: list[list[int]]) -> list[int]:
    """The tokens every prompt starts with, keeping at least one token of each prompt's own.

    Empty when there is one prompt or the common part is under ``MIN_SHARED_PREFIX`` tokens.
    """
    if len(prompts) < 2:
        return []
    first, size = prompts[0], min(len(p) for p in prompts) - 1
    for prompt in prompts[1:]:
        size = next((k for k in range(size) if prompt[k] != first[k]), size)
    return first[:size] if size >= MIN_SHARED_PREFIX else []


def _eos_ids(tokenizer: Any, model: Any) -> frozenset[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return frozenset(int(i) for i in ids if i is not None)


def _adapter_name(adapter: Path) -> str:
    # peft adapter names become module attribute names: no dots or colons allowed.
    return "a" + hashlib.sha1(str(adapter).encode()).hexdigest()[:12]


def _fresh_seed() -> int:
    return int(torch.randint(0, 2**31 - 1, ()).item())
