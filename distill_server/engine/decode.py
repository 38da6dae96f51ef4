"""Runs one base model with transformers: rows decoded together, joining and leaving a batch.

This module imports torch and transformers at import time; only the batcher imports it,
lazily, so that ``import distill_server`` stays cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers.cache_utils import Cache

from distill_server import devices
from distill_server.architectures import context_limit
from distill_server.engine.cache import (
    PrefixCache,
    RoomyLayer,
    append_rows,
    drop_leading,
    held_bytes,
    keep_rows,
    reserve,
)
from distill_server.engine.constrain import Constraint, Grammars, Matcher
from distill_server.engine.text import Answer
from distill_server.errors import ApiError
from distill_server.models import ModelSource
from distill_server.weights.loading import encode, load_pretrained, quiet_peft, render

_RoomyLayer = RoomyLayer  # looked up at each use, so that a benchmark can swap it out
_SEEDS = range(-(2**63), 2**64)
PREFIX_CACHE_BYTES = 128 * 2**20
"""Keys and values of recent shared prefixes kept for requests that arrive later (a 470-token
few-shot prefix of SmolLM2-135M takes about 21 MB)."""
KV_SHARE = 0.25
"""The share of the memory available when a model loads that its running rows' keys and
values may take (the batcher admits rows within it; the others wait in its queue)..."""
KV_MOST_CPU = 640 * 2**20
"""...and at most this much on the CPU: a laptop's main job (SmolLM2-135M, 64 calls in flight,
few-shot prompts of 500 tokens) keeps about 27 rows decoding, and its calls peak at about
2.1 GB (``benchmarks/bench_main_job.py``; 768 MB kept 29 rows in the same time, and peaked at
2.2 to 2.6 GB from run to run). Rows are counted at the batch's width: counted at their own
length, a batch of short student prompts beside long teacher ones held 1.8 GB of keys and
values, and the job peaked at 2.78 GB; 512 MB kept 23 rows, 7% slower."""
KV_LEAST = 64 * 2**20
EXPECTED_ANSWER = 64
"""Tokens a new row is expected to add to its prompt while it decodes, when it is admitted."""
"""The seeds ``torch.Generator.manual_seed`` accepts."""


@dataclass(frozen=True, slots=True)
class GenRequest:
    """One chat request, as the batcher hands it to the engine."""

    messages: tuple[dict[str, Any], ...]
    """Role and content; an assistant's ``tool_calls``, a tool message's ``tool_call_id``."""
    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    on_text: Callable[[str], None] | None = field(default=None, compare=False)
    """Called on the decoding thread with each new piece of the answer, stop text held back;
    the pieces joined are the final ``GenResult.text``. An exception it raises fails this
    request alone."""
    ignore_eos: bool = False
    """Decode on past the end-of-turn token until ``max_tokens`` (for load tests)."""
    tools: tuple[dict[str, Any], ...] = ()
    """Function tool definitions (wire shape), rendered into the prompt."""
    constraint: Constraint | None = None
    """The grammar the answer must follow (JSON, a JSON Schema, tool calls); the row stops
    with ``stop`` once the grammar is complete."""


@dataclass(frozen=True, slots=True)
class GenResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    batch_size: int
    """The most requests decoded together in one step with this one (itself included)."""
    decode_s: float = 0.0
    """Seconds from when the batcher took the request off its queue until it was done."""


@dataclass(eq=False, slots=True)
class Row:
    """One request while it decodes; ``finish`` or ``error`` is set once it is done."""

    request: GenRequest
    prompt: list[int]
    limit: int
    generator: torch.Generator | None
    answer: Answer
    cancelled: Callable[[], bool]
    tokens: list[int] = field(default_factory=list)
    finish: str | None = None
    error: BaseException | None = None
    batch_size: int = 0
    matcher: Matcher | None = None
    """Where a constrained row is in its grammar."""
    taken: float = field(default_factory=time.perf_counter)  # off the queue, into a batch

    @property
    def done(self) -> bool:
        return self.finish is not None or self.error is not None

    def result(self) -> GenResult:
        text = self.answer.finish(self.tokens)
        finish = self.finish or "length"
        return GenResult(
            text,
            len(self.prompt),
            len(self.tokens),
            finish,
            self.batch_size,
            time.perf_counter() - self.taken,
        )


@dataclass(eq=False, slots=True)
class Decoding:
    """Rows of one adapter decoding together: the KV cache, the mask, the next tokens."""

    adapter: Path | None
    rows: list[Row]
    past: Cache
    mask: torch.Tensor
    """Which cached positions, plus the pending tokens, each row attends to."""
    positions: torch.Tensor
    ids: torch.Tensor
    """The tokens the next step feeds in, one per row."""


@dataclass(eq=False, slots=True)
class Prefill:
    """A group of rows whose prompts run a chunk at a time: a shared prefix, then the rest.

    The shared prefix (tokens every row's prompt starts with) runs once, on one row of KV
    cache, which is then copied to every row; the rest of each prompt is left-padded to the
    longest and runs in columns. ``Engine.advance`` runs the next chunk.
    """

    adapter: Path | None
    rows: list[Row]
    past: Cache
    shared: list[int]
    ids: torch.Tensor
    """Each row's prompt after the shared prefix, left-padded to the longest."""
    mask: torch.Tensor
    """The shared prefix, the padding and each row's own tokens."""
    positions: torch.Tensor
    """The position of each of ``ids``."""
    ran: int = 0
    """Tokens of the shared prefix, then columns of ``ids``, that have run."""

    @property
    def remaining(self) -> int:
        """Tokens still to run: what is left of the prefix, once, and each row's columns."""
        columns = self.ids.shape[1]
        prefix_left = max(len(self.shared) - self.ran, 0)
        column = max(self.ran - len(self.shared), 0)
        return prefix_left + len(self.rows) * (columns - column)


class Engine:
    """A loaded base model plus the LoRA adapters loaded onto it so far.

    ``generate`` decodes a list of requests to the end. The batcher instead drives decoding a
    step at a time: ``row`` prepares a request, ``prefills`` groups new rows, ``advance`` runs
    the next chunk of a group's prompts (until it returns the group's ``Decoding``), ``join``
    adds those rows to a running ``Decoding`` and ``step`` decodes one more token for every
    row. ``start`` runs new rows' prompts whole.
    """

    def __init__(self, source: ModelSource) -> None:
        self.source = source
        self.tokenizer, self.base = load_pretrained(source)
        self._peft: Any = None
        self._eos = _eos_ids(self.tokenizer, self.base)
        self.context = context_limit(self.base.config)
        self.device = self.base.device
        # Prompt tokens the batcher runs per step besides its decoding while other requests
        # wait on it: an accelerator runs 512 in about a decoding step's time; a CPU computes
        # each token, so it takes fewer. With nothing else to serve a step takes up to twice
        # as many (``Batcher``): a batch of prompts runs in a few wide steps, not many thin ones.
        self.prefill_chunk = 256 if self.device.type == "cpu" else 512
        self.prefixes = PrefixCache(PREFIX_CACHE_BYTES)
        self.kv_token_bytes = _kv_token_bytes(self.base)
        self.kv_budget = _kv_budget(self.device.type)
        self._threads = _Threads(torch.get_num_threads() if self.device.type == "cpu" else 1)
        self.grammars = Grammars(self.tokenizer, self._eos)
        self.counts = Counter[str]()
        """Prompt tokens by how they ran: ``prompt`` in all, ``cached`` (restored from the
        prefix cache), ``shared`` (a group's common prefix, run once for its other rows),
        ``run`` (computed, padding included); ``steps`` and ``decoded`` (rows times steps)."""

    def kv_length(self, row: Row) -> int:
        """Positions ``row`` is expected to reach: its prompt, and the answer it is expected to
        add while it decodes (what it has decoded so far, if more)."""
        return len(row.prompt) + max(min(row.limit, EXPECTED_ANSWER), len(row.tokens))

    def kv_shape(self, group: Decoding | Prefill) -> tuple[int, int, int]:
        """``group``'s rows, the width they are expected to reach together (every row is as
        wide as the widest: the shorter ones are padded), and the bytes its cache holds now
        (its room: rows that left and positions set aside included)."""
        lengths = [self.kv_length(row) for row in group.rows]
        if isinstance(group, Decoding):
            width, held = group.mask.shape[1], held_bytes(group.past)
        else:
            width, held = len(group.shared) + group.ids.shape[1], held_bytes(group.past)
        return len(group.rows), max([width, *lengths]), held

    def generate(
        self, adapter: Path | None, requests: Sequence[GenRequest]
    ) -> list[GenResult | Exception]:
        """Decode ``requests`` together on the base or ``adapter``, to the end.

        A request that cannot run (its prompt overflows the context, a bad seed) gets its
        error back in its place instead of failing the others.
        """
        prepared: list[Row | Exception] = []
        for request in requests:
            try:
                prepared.append(self.row(request))
            except Exception as error:
                prepared.append(error)
        rows = [row for row in prepared if isinstance(row, Row)]
        decoding, _ = self.start(adapter, rows)
        while decoding is not None and decoding.rows:
            self.step(decoding)
        return [row if isinstance(row, Exception) else _outcome(row) for row in prepared]

    def row(self, request: GenRequest, cancelled: Callable[[], bool] = lambda: False) -> Row:
        """A request ready to decode; raises ``ApiError`` for one that cannot run."""
        prompt = encode(
            self.tokenizer, render(self.tokenizer, request.messages, True, request.tools)
        )
        room = self.context - len(prompt)
        if room < 1:
            raise ApiError(
                400,
                f"The prompt has {len(prompt)} tokens; this model's context is {self.context}.",
                param="messages",
                code="context_length_exceeded",
            )
        limit = min(room, request.max_tokens or 256)
        seed = _checked_seed(request.seed)
        generator = None
        if request.temperature > 0:
            generator = torch.Generator()
            generator.manual_seed(seed if seed is not None else secrets.randbits(63))
        answer = Answer(self.tokenizer, request.stop, request.on_text)
        row = Row(request, prompt, limit, generator, answer, cancelled)
        if request.constraint is not None:
            row.matcher = self.grammars.matcher(request.constraint)
        return row

    def start(self, adapter: Path | None, rows: list[Row]) -> tuple[Decoding | None, list[Row]]:
        """Run the prompts of ``rows`` and pick each one's first token.

        Rows whose prompts start the same way (the same system message and few-shot turns)
        run that shared prefix once. Returns the rows decoding on (None when none is), and
        the rows already done: finished after one token, or failed with their group.
        """
        groups: list[Decoding] = []
        failed: list[Row] = []
        for prefill in self.prefills(adapter, rows):
            try:
                decoding = None
                while decoding is None and prefill.rows:
                    failed += self.drop_cancelled(prefill)
                    decoding = self.advance(prefill, prefill.remaining)
                if decoding is not None:
                    groups.append(decoding)
            except Exception as error:  # this group's prompts only; the others go on
                for row in prefill.rows:
                    row.error = error
                failed += prefill.rows
        if not groups:
            return None, failed
        decoding = groups[0]
        for other in groups[1:]:
            self.join(decoding, other)
        return decoding, failed + self.leave(decoding)

    def prefills(
        self, adapter: Path | None, rows: list[Row], chunk: int | None = None
    ) -> list[Prefill]:
        """``rows`` in groups whose prompts run together, none run yet.

        Rows that share their leading messages form a group (and run their common prefix
        once). The others go together, or with a ``chunk`` size, by length: prompts of up to
        a chunk together, longer ones with those up to twice as long, so that a short prompt
        neither waits for a long one's chunks nor is padded to its length.
        """
        groups: list[list[Row]] = []
        for group in _by_leading_messages(rows):
            if chunk is None or len(group) == 1 or _shared_prefix([r.prompt for r in group]):
                groups.append(group)
                continue
            lengths: dict[int, list[Row]] = {}
            for row in group:
                size = ((len(row.prompt) - 1) // chunk).bit_length()
                lengths.setdefault(size, []).append(row)
            groups += lengths.values()
        return [self._prefill(adapter, group) for group in groups]

    def advance(self, prefill: Prefill, tokens: int) -> Decoding | None:
        """Run about ``tokens`` more of ``prefill``'s prompt tokens (at least one column).

        Returns the group's ``Decoding``, its first tokens picked, once the prompts have run;
        None before, or when no row is left (``drop_cancelled``).
        """
        shared, columns = len(prefill.shared), prefill.ids.shape[1]
        with self._model(prefill.adapter) as model, torch.inference_mode():
            if prefill.ran < shared:
                end = min(shared, prefill.ran + max(tokens, 1))
                ids = torch.tensor([prefill.shared[prefill.ran : end]], device=self.device)
                positions = torch.arange(prefill.ran, end, device=self.device).unsqueeze(0)
                with self._threads("prompt", end - prefill.ran):
                    out = model(
                        input_ids=ids,
                        position_ids=positions,
                        cache=prefill.past,
                        use_cache=True,
                        logits_to_keep=1,
                    )
                prefill.past = out.cache
                reserve(prefill.past, shared)
                self.counts["run"] += end - prefill.ran
                tokens -= end - prefill.ran
                prefill.ran = end
                if end == shared:  # later requests that start the same way start from here
                    self.prefixes.put(prefill.adapter, tuple(prefill.shared), prefill.past)
                if end < shared or tokens <= 0 or not prefill.rows:
                    return None
            if prefill.ran == shared and shared:
                prefill.past.batch_repeat_interleave(len(prefill.rows))
            if not prefill.rows:
                return None
            begin = prefill.ran - shared
            end = min(columns, begin + max(tokens // len(prefill.rows), 1))
            with self._threads("prompt", len(prefill.rows) * (end - begin)):
                out = model(
                    input_ids=prefill.ids[:, begin:end],
                    attention_mask=prefill.mask[:, : shared + end],
                    position_ids=prefill.positions[:, begin:end],
                    cache=prefill.past,
                    use_cache=True,
                    logits_to_keep=1,
                )
            prefill.past = out.cache
            reserve(prefill.past, shared + columns)
            self.counts["run"] += len(prefill.rows) * (end - begin)
            prefill.ran = shared + end
        if end < columns:
            return None
        decoding = Decoding(
            prefill.adapter,
            prefill.rows,
            prefill.past,
            prefill.mask,
            prefill.positions[:, -1:],
            prefill.ids[:, -1:],
        )
        self._advance(decoding, out.logits[:, -1, :].float())
        return decoding

    def drop_cancelled(self, prefill: Prefill) -> list[Row]:
        """Rows cancelled while their prompts run leave ``prefill``; returns them.

        Their KV cache goes with them, and so do columns only their prompts needed that have
        not run yet.
        """
        gone = [row for row in prefill.rows if row.cancelled()]
        if not gone:
            return []
        for row in gone:
            row.finish = "cancelled"
        keep = [k for k, row in enumerate(prefill.rows) if not row.done]
        prefill.rows = [prefill.rows[k] for k in keep]
        if not keep:
            prefill.past = Cache(layer_class_to_replicate=_RoomyLayer)
            return gone
        shared = len(prefill.shared)
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        if prefill.ran > shared:  # below it, the cache has the prefix's single row yet
            prefill.past.batch_select_indices(index)
        ids, mask = prefill.ids[index], prefill.mask[index]
        positions = prefill.positions[index]
        # Columns that are padding for every remaining row, not run yet, are skipped.
        column = max(prefill.ran - shared, 0)
        lead = int(mask[:, shared:].any(dim=0).int().argmax())
        if lead > column:
            kept = [*range(column), *range(lead, ids.shape[1])]
            ids, positions = ids[:, kept], positions[:, kept]
            mask = mask[:, [*range(shared), *(shared + k for k in kept)]]
        prefill.ids, prefill.mask, prefill.positions = ids, mask, positions
        return gone

    def join(self, decoding: Decoding, new: Decoding) -> None:
        """Add ``new``'s rows (of the same adapter) to ``decoding``, between two steps."""
        width = max(decoding.mask.shape[1], new.mask.shape[1])
        append_rows(decoding.past, new.past)
        decoding.mask = torch.cat([_left_pad(decoding.mask, width), _left_pad(new.mask, width)])
        decoding.positions = torch.cat([decoding.positions, new.positions])
        decoding.ids = torch.cat([decoding.ids, new.ids])
        decoding.rows += new.rows

    def step(self, decoding: Decoding) -> list[Row]:
        """Decode one token for every row; returns the rows that are done, which leave."""
        with (
            self._model(decoding.adapter) as model,
            torch.inference_mode(),
            self._threads("step", len(decoding.rows)),
        ):
            out = model(
                input_ids=decoding.ids,
                attention_mask=decoding.mask,
                position_ids=decoding.positions,
                cache=decoding.past,
                use_cache=True,
                logits_to_keep=1,
            )
        decoding.past = out.cache
        self.counts["steps"] += 1
        self.counts["decoded"] += len(decoding.rows)
        self._advance(decoding, out.logits[:, -1, :].float())
        return self.leave(decoding)

    def _prefill(self, adapter: Path | None, rows: list[Row]) -> Prefill:
        pad = int(self.tokenizer.pad_token_id)
        # Rows that start with the same tokens (a few-shot prompt, a long system message) run
        # that prefix once and copy its KV cache to every row, so a batch pays for it once
        # instead of once per row. The rest of each prompt is left-padded after it; the mask
        # hides the padding wherever it sits.
        prompts = [row.prompt for row in rows]
        shared = _shared_prefix(prompts)
        # A prefix that requests before these ran (a few-shot prompt): its keys and values are
        # kept, so these start after it, alone or together.
        cached = self.prefixes.longest(adapter, prompts, MIN_SHARED_PREFIX)
        if len(cached) > len(shared):
            shared = list(cached)
        rests = [row.prompt[len(shared) :] for row in rows]
        width = max(len(rest) for rest in rests)
        ids = torch.tensor(
            [[pad] * (width - len(rest)) + rest for rest in rests], device=self.device
        )
        mask = torch.tensor(
            [[1] * len(shared) + [0] * (width - len(rest)) + [1] * len(rest) for rest in rests]
        )
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, len(shared) :]
        past = Cache(layer_class_to_replicate=_RoomyLayer)
        if cached:
            self.prefixes.restore(adapter, cached, past)
        self.counts["prompts"] += len(rows)
        self.counts["prompt"] += sum(len(p) for p in prompts)
        self.counts["cached"] += len(cached) * len(rows)
        self.counts["shared"] += (len(shared) - len(cached)) * (len(rows) - 1)
        self.counts["groups"] += 1
        return Prefill(adapter, rows, past, shared, ids, mask, positions, ran=len(cached))

    def _advance(self, decoding: Decoding, logits: torch.Tensor) -> None:
        """Append each row's next token; the next step feeds them in."""
        constrained = [(k, r.matcher) for k, r in enumerate(decoding.rows) if r.matcher]
        if constrained:  # the tokens their grammars do not allow next are out
            self.grammars.mask(logits, constrained)
        # ``max``'s indices: the same first largest logit as ``argmax``, which on a CPU takes
        # about three times as long (2.2 against 0.8 ms for 32 rows of SmolLM2's vocabulary).
        greedy = logits.max(dim=-1).indices.tolist()
        for row, token, logit in zip(decoding.rows, greedy, logits, strict=True):
            row.batch_size = max(row.batch_size, len(decoding.rows))
            try:  # whatever goes wrong in one row (sampling, its stream) fails that row only
                self._append(
                    row, int(token) if row.generator is None else _sample(logit.cpu(), row)
                )
            except Exception as error:
                row.error = error
        ids = torch.tensor(
            [row.tokens[-1] if row.tokens else 0 for row in decoding.rows], device=self.device
        )
        decoding.ids = ids.unsqueeze(1)
        decoding.mask = torch.cat([decoding.mask, torch.ones_like(decoding.ids)], dim=1)
        decoding.positions = decoding.positions + 1

    def _append(self, row: Row, token: int) -> None:
        if row.cancelled():
            row.finish = "cancelled"
            return
        row.tokens.append(token)
        if token in self._eos and not row.request.ignore_eos:
            row.finish = "stop"  # the end-of-turn token is counted, never shown
            return
        if row.answer.incremental:
            row.answer.update(row.tokens)
            if row.answer.stopped:
                row.finish = "stop"
                return
        if row.matcher is not None and row.matcher.consume(token):
            row.finish = "stop"  # the grammar is complete: nothing more may follow
            return
        if len(row.tokens) >= row.limit:
            row.finish = "length"

    def leave(self, decoding: Decoding) -> list[Row]:
        """Done rows leave the batch and its KV cache; so do positions no row still needs."""
        done = [row for row in decoding.rows if row.done]
        if not done:
            return []
        keep = [k for k, row in enumerate(decoding.rows) if not row.done]
        if keep:
            # The last rows take the places of those that left: only they are copied.
            order = keep_rows(decoding.past, keep)
            index = torch.tensor(order, dtype=torch.long, device=self.device)
            decoding.rows = [decoding.rows[k] for k in order]
            mask = decoding.mask[index]
            # Padding ahead of every remaining row (a long row that left) is no longer needed.
            unused = int(mask[:, :-1].any(dim=0).int().argmax()) if mask.shape[1] > 1 else 0
            if unused:
                drop_leading(decoding.past, unused)
            decoding.mask = mask[:, unused:]
            decoding.positions, decoding.ids = decoding.positions[index], decoding.ids[index]
        else:  # its keys and values go now, not when the last reference to it does
            decoding.rows, decoding.past = [], Cache(layer_class_to_replicate=_RoomyLayer)
        return done

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
            with quiet_peft(self.base):
                self._peft = PeftModel.from_pretrained(self.base, str(adapter), adapter_name=name)
            self._peft.eval()
        elif name not in self._peft.peft_config:
            self._peft.load_adapter(str(adapter), adapter_name=name)
        return self._peft


class _Threads:
    """How many threads each kind of model call runs on: the count that has run it fastest.

    torch runs an operation on one thread per core by default, the fastest on an idle CPU. On
    a busy one (two cores, other processes running) the threads wait for each other at each of
    a decoding step's hundreds of small operations: a step of 32 rows took about six times as
    long on two threads as on one (``benchmarks/bench_engine.py``). So each kind of call (a
    decoding step, a chunk of prompts) is timed, in seconds per token, on every count it runs
    with, and runs on the fastest so far. It starts on the default (the most threads); the
    other counts are first tried at its ``FIRST_TRY``-th call (an answer of a few tokens is
    not slowed by trying them), then every ``TRY_EVERY`` calls, less often the longer the
    fastest stays fastest. The count can change a result's last bits, as the batch's size does.

    A kind is timed apart for each size of call, by powers of two of its tokens (a step of 30
    rows is not compared with one of 3: a token costs less in a wider call, so the count
    timed on the wider one would look faster).
    """

    FIRST_TRY = 4
    TRY_EVERY = 16
    TRY_AT_MOST_EVERY = 64
    WEIGHT = 0.5
    """Of the newest timing in the fastest count's average: the load on the machine changes.
    A count tried now and then is timed afresh instead."""

    def __init__(self, most: int) -> None:
        self.counts = sorted({1, max(most // 2, 1), max(most, 1)})
        self.cost: dict[tuple[str, int], float] = {}
        self.calls: dict[str, int] = {}
        self.every: dict[str, int] = {}

    @staticmethod
    def kind_of(kind: str, tokens: int) -> str:
        """``kind`` and the size class of a call of ``tokens``: ``step/32`` is 32 to 63 rows."""
        return f"{kind}/{1 << (max(tokens, 1).bit_length() - 1)}"

    def pick(self, kind: str) -> int:
        if not any((kind, count) in self.cost for count in self.counts):
            return self.counts[-1]  # the most threads first: the default, right on an idle CPU
        best = self.best(kind)
        calls = self.calls[kind] = self.calls.get(kind, 0) + 1
        untried = [count for count in self.counts if (kind, count) not in self.cost]
        if untried and calls >= self.FIRST_TRY:
            return untried[-1]
        every = self.every.setdefault(kind, self.TRY_EVERY)
        if calls % every:
            return best
        others = [count for count in self.counts if count != best]
        return others[calls // every % len(others)]

    def best(self, kind: str) -> int:
        """The fastest count so far of those timed."""
        timed = [count for count in self.counts if (kind, count) in self.cost]
        return min(timed, key=lambda count: self.cost[kind, count])

    def timed(self, kind: str, count: int, seconds: float) -> None:
        """Note a call of ``kind`` on ``count`` threads that took ``seconds`` per token."""
        old = self.cost.get((kind, count))
        if old is None:
            self.cost[kind, count] = seconds
            return
        if count != self.best(kind):  # a count tried now and then: timed afresh
            self.cost[kind, count] = seconds
            every = self.every.get(kind, self.TRY_EVERY)
            stays = self.best(kind) != count  # tried less often while the fastest stays so
            self.every[kind] = min(2 * every, self.TRY_AT_MOST_EVERY) if stays else self.TRY_EVERY
            return
        self.cost[kind, count] = self.WEIGHT * seconds + (1 - self.WEIGHT) * old

    @contextlib.contextmanager
    def __call__(self, kind: str, tokens: int) -> Iterator[None]:
        """Run the block on the chosen count of threads and time it."""
        if len(self.counts) == 1:
            yield
            return
        kind = self.kind_of(kind, tokens)
        count, previous = self.pick(kind), torch.get_num_threads()
        torch.set_num_threads(count)
        began = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - began
            torch.set_num_threads(previous)
        self.timed(kind, count, seconds / max(tokens, 1))


def _outcome(row: Row) -> GenResult | Exception:
    if row.error is not None:
        return row.error if isinstance(row.error, Exception) else RuntimeError(str(row.error))
    try:
        return row.result()
    except Exception as error:
        return error


def _checked_seed(seed: object) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or seed not in _SEEDS:
        raise ApiError(
            400,
            f"`seed` is {seed!r}; it must be an integer from -2**63 to 2**64 - 1.",
            param="seed",
        )
    return seed


def _sample(logits: torch.Tensor, row: Row) -> int:
    # In float64 (a temperature of 1e-300 is 0 in float32) and less the largest logit first:
    # a tiny temperature then sends every other logit to -inf and leaves the likeliest token,
    # instead of sending them all to inf, which made nan.
    scaled = (logits.double() - logits.max().double()) / row.request.temperature
    probs = torch.softmax(scaled, dim=-1)
    if row.request.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < row.request.top_p
        keep[0] = True  # the likeliest token always stays: top_p=0 means greedy, not nothing
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=row.generator).item())


def _left_pad(mask: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(mask, (width - mask.shape[1], 0))


def _by_leading_messages(rows: list[Row]) -> list[list[Row]]:
    """Rows grouped by all but their last message; rows alone in their group go together."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        lead = json.dumps([row.request.tools, row.request.messages[:-1]], sort_keys=True)
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


def _kv_token_bytes(model: Any) -> int:
    """Bytes of keys and values one token takes in every layer of ``model``."""
    config = getattr(model.config, "text_config", None) or model.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    size = torch.empty((), dtype=model.dtype).element_size()
    return int(config.num_hidden_layers * 2 * kv_heads * head_dim * size)


def _kv_budget(device: str) -> int:
    """Bytes the running rows' keys and values may take: a share of the memory available now,
    at most ``KV_MOST_CPU`` on the CPU, at least ``KV_LEAST``."""
    placement = devices.Placement("cuda" if device == "cuda" else "cpu", "float32")
    free = devices.available_bytes(placement)
    budget = KV_MOST_CPU if device == "cpu" else None
    if free is not None:
        share = int(free * KV_SHARE)
        budget = share if budget is None else min(budget, share)
    return max(budget if budget is not None else KV_MOST_CPU, KV_LEAST)


def _eos_ids(tokenizer: Any, model: Any) -> frozenset[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return frozenset(int(i) for i in ids if i is not None)


def _adapter_name(adapter: Path) -> str:
    # peft adapter names become module attribute names: no dots or colons allowed.
    return "a" + hashlib.sha1(str(adapter).encode()).hexdigest()[:12]
