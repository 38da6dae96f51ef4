"""The engine and batcher with the tiny model: requests are independent of one another."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from pathlib import Path
from typing import Any

import pytest

from distill_server.engine.batcher import Batcher
from distill_server.engine.decode import Engine, GenRequest, GenResult
from distill_server.errors import ApiError
from distill_server.models import ModelSource

HUGE = 100_000
WAIT = 120  # seconds; generous, for a loaded CI machine


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Engine:
    return Engine(ModelSource("tiny", tiny_model))


@pytest.fixture
def batcher(engine: Engine) -> Iterator[Batcher]:
    batcher = Batcher(lambda: engine)
    yield batcher
    batcher.close()


def ask(prompt: str, max_tokens: int = 8, **options: Any) -> GenRequest:
    settings: dict[str, Any] = {"temperature": 0.0, "top_p": 1.0, "seed": None, "stop": ()}
    settings.update(options)
    return GenRequest(({"role": "user", "content": prompt},), max_tokens, **settings)


def alone(engine: Engine, request: GenRequest) -> GenResult:
    [result] = engine.generate(None, [request])
    assert isinstance(result, GenResult), result
    return result


def streaming(batcher: Batcher, prompt: str) -> tuple[Future[GenResult], threading.Event]:
    """A request decoding until the context is full; the event is set once text streams."""
    started = threading.Event()
    request = ask(prompt, HUGE, ignore_eos=True, on_text=lambda _: started.set())
    future = batcher.submit(None, request)
    assert started.wait(WAIT), "the long request never produced text"
    return future, started


def test_a_bad_seed_fails_its_own_request_and_no_other(batcher: Batcher, engine: Engine) -> None:
    prompts = [f"Tell me fact {i}." for i in range(4)]
    good = [ask(p, temperature=0.8, seed=i) for i, p in enumerate(prompts)]
    bad = [ask("Bad.", temperature=0.8, seed="abc"), ask("Big.", temperature=0.8, seed=2**70)]
    futures = [batcher.submit(None, r) for r in [*good[:2], *bad, *good[2:]]]
    for future in futures[2:4]:
        with pytest.raises(ApiError, match="seed"):
            future.result(WAIT)
    texts = [f.result(WAIT).text for f in [*futures[:2], *futures[4:]]]
    assert texts == [alone(engine, r).text for r in good]


def test_a_failing_stream_callback_fails_that_request_only(batcher: Batcher) -> None:
    def broken(delta: str) -> None:
        raise OSError("client went away")

    futures = [batcher.submit(None, ask(f"Question {i}?")) for i in range(3)]
    futures.insert(1, batcher.submit(None, ask("Stream me.", on_text=broken)))
    with pytest.raises(OSError, match="client went away"):
        futures[1].result(WAIT)
    assert all(f.result(WAIT).completion_tokens > 0 for f in futures if f is not futures[1])


def test_seeded_sampling_reproduces_and_leaves_global_random_state_alone(
    batcher: Batcher,
) -> None:
    import torch

    seeded = ask("Write a line.", 12, temperature=1.0, seed=1234)
    first = batcher.submit(None, seeded).result(WAIT).text
    state = torch.get_rng_state()
    # Unseeded sampled requests draw fresh seeds without touching torch's global generator,
    # which the trainer (or the user's code) relies on.
    others = [batcher.submit(None, ask(f"Line {i}.", 12, temperature=1.0)) for i in range(3)]
    again = batcher.submit(None, seeded)
    torch.rand(100)
    assert again.result(WAIT).text == first
    assert all(f.result(WAIT).completion_tokens for f in others)
    torch.set_rng_state(state)
    unseeded = batcher.submit(None, ask("Line.", 4, temperature=1.0)).result(WAIT)
    assert unseeded.completion_tokens and torch.equal(torch.get_rng_state(), state)


def test_short_request_finishes_while_a_long_one_decodes(batcher: Batcher, engine: Engine) -> None:
    long, _ = streaming(batcher, "Tell me everything.")
    short = ask("Hello?", 4)
    result = batcher.submit(None, short).result(WAIT)
    # It joined the running batch between two steps, and its answer is the one it has alone.
    assert not long.done()
    assert result.batch_size == 2
    assert result.text == alone(engine, short).text
    long.cancel()


def test_cancelled_request_stops_decoding_and_frees_its_row(batcher: Batcher) -> None:
    deltas: list[str] = []
    started = threading.Event()

    def on_text(delta: str) -> None:
        deltas.append(delta)
        started.set()

    future = batcher.submit(None, ask("Go on forever.", HUGE, ignore_eos=True, on_text=on_text))
    assert started.wait(WAIT)
    assert future.cancel()
    time.sleep(0.2)  # a step or two may still be under way
    seen = len(deltas)
    result = batcher.submit(None, ask("Short?", 4)).result(WAIT)
    time.sleep(0.2)
    assert len(deltas) == seen, "the cancelled request kept decoding"
    assert result.batch_size == 1
    with pytest.raises(CancelledError):
        future.result()


def test_queued_request_cancelled_before_it_runs_never_decodes(engine: Engine) -> None:
    gate = threading.Event()

    def load() -> Engine:
        gate.wait(WAIT)
        return engine

    batcher = Batcher(load)
    try:
        first = batcher.submit(None, ask("First."))
        called: list[str] = []
        queued = batcher.submit(None, ask("Second.", on_text=called.append))
        assert queued.cancel()
        gate.set()
        assert first.result(WAIT).completion_tokens
        assert called == []
    finally:
        batcher.close()


def test_close_during_a_decode_returns_within_a_step_and_cancels_it(engine: Engine) -> None:
    batcher = Batcher(lambda: engine)
    long, _ = streaming(batcher, "Never stop.")
    began = time.monotonic()
    batcher.close()
    assert time.monotonic() - began < 1.0
    assert long.cancelled()


def test_stop_requests_cancels_every_request_at_once_even_mid_load(engine: Engine) -> None:
    gate = threading.Event()

    def load() -> Engine:  # a model conversion or load that takes its time
        gate.wait(WAIT)
        return engine

    batcher = Batcher(load)
    try:
        futures = [batcher.submit(None, ask(f"Question {i}.")) for i in range(3)]
        batcher.stop_requests()  # returns without waiting for the worker
        assert all(future.cancelled() for future in futures)
        assert batcher.submit(None, ask("Too late.")).cancelled()
    finally:
        gate.set()
        batcher.close()


def test_streamed_pieces_join_to_the_answer_and_no_stop_text_leaks(
    batcher: Batcher, engine: Engine
) -> None:
    full = alone(engine, ask("Say a lot.", 40)).text
    stop = full[15:19]
    assert stop.strip() and full.find(stop) >= 10
    pieces: list[str] = []
    request = ask("Say a lot.", 40, stop=(stop,), on_text=pieces.append)
    result = batcher.submit(None, request).result(WAIT)
    assert result.finish_reason == "stop"
    assert result.text == full[: full.find(stop)]
    assert "".join(pieces) == result.text and len(pieces) > 1
    whole: list[str] = []
    streamed = batcher.submit(None, ask("Say a lot.", 40, on_text=whole.append)).result(WAIT)
    assert "".join(whole) == streamed.text == full


def test_a_request_that_comes_later_starts_after_a_prefix_that_earlier_ones_ran(
    tiny_model: Path,
) -> None:
    from distill_server.engine.cache import PrefixCache

    engine = Engine(ModelSource("tiny", tiny_model))
    few_shot = "You answer with one word. " + " ".join(f"Example {i}: yes." for i in range(30))

    def with_prefix(question: str) -> GenRequest:
        messages = ({"role": "system", "content": few_shot}, {"role": "user", "content": question})
        return GenRequest(messages, 6, 0.0, 1.0, None, ())

    # The two share more than the few-shot block: their messages start alike too.
    first = engine.generate(
        None, [with_prefix("Please say it: red?"), with_prefix("Please say it: blue?")]
    )
    assert all(isinstance(r, GenResult) for r in first)
    later = engine.row(with_prefix("Green or yellow?"))
    (prefill,) = engine.prefills(None, [later])
    # The prefix the first two ran together is kept: the later request runs its own tokens.
    assert len(prefill.shared) >= 30
    assert prefill.ran == len(prefill.shared)
    assert prefill.past.get_seq_length() == len(prefill.shared)
    (cached,) = engine.generate(None, [with_prefix("Green or yellow?")])
    engine.prefixes = PrefixCache(0)  # nothing kept: the whole prompt runs
    (fresh,) = engine.prefills(None, [engine.row(with_prefix("Green or yellow?"))])
    assert fresh.ran == 0 and not fresh.shared
    (whole,) = engine.generate(None, [with_prefix("Green or yellow?")])
    assert isinstance(cached, GenResult) and isinstance(whole, GenResult)
    assert (cached.text, cached.prompt_tokens) == (whole.text, whole.prompt_tokens)


def test_the_prefix_cache_keeps_within_its_budget_dropping_the_oldest() -> None:
    import torch
    from transformers.cache_utils import Cache

    from distill_server.engine.cache import PrefixCache, RoomyLayer

    def one_row(length: int) -> Cache:
        cache = Cache(layer_class_to_replicate=RoomyLayer)
        cache.update(torch.zeros(1, 1, length, 4), torch.zeros(1, 1, length, 4), 0)
        return cache

    prefixes = PrefixCache(budget=2 * 2 * 40 * 4 * 4)  # two 40-token prefixes
    for start in (1, 2, 3):
        prefixes.put(None, tuple(range(start, start + 40)), one_row(40))
    assert prefixes.longest(None, [list(range(1, 50))]) == ()  # the oldest went
    assert prefixes.longest(None, [list(range(3, 50))]) == tuple(range(3, 43))
    assert prefixes.longest("adapter", [list(range(3, 50))]) == ()  # another adapter's
    assert prefixes.longest(None, [list(range(3, 43))]) == tuple(range(3, 42))  # leaves one
    # Part of a cached prefix serves a prompt that leaves it midway.
    parted = [*range(3, 21), 999, *range(21, 40)]
    assert prefixes.longest(None, [parted]) == tuple(range(3, 21))
    assert prefixes.longest(None, [parted], least=32) == ()


def test_rows_past_the_key_value_budget_wait_for_room_and_all_finish(engine: Engine) -> None:
    requests = [ask(f"Count to {n}.", max_tokens=6) for n in range(6)]
    need = max(engine.kv_length(engine.row(r)) for r in requests) * engine.kv_token_bytes
    budget, engine.kv_budget = engine.kv_budget, 2 * need
    batcher = Batcher(lambda: engine)
    try:
        futures = [batcher.submit(None, r) for r in requests]
        results = [f.result(timeout=WAIT) for f in futures]
    finally:
        batcher.close()
        engine.kv_budget = budget
    # Two rows fit the budget at a time: the others waited in the queue, and every one ran.
    assert max(r.batch_size for r in results) == 2
    assert all(r.completion_tokens == 6 or r.finish_reason == "stop" for r in results)
    alone = engine.generate(None, requests)
    assert [r.text for r in results] == [r.text for r in alone if isinstance(r, GenResult)]


def test_a_long_row_costs_its_width_for_every_row_beside_it(engine: Engine) -> None:
    # Rows decoding together are as wide as the widest: beside a long prompt, a short one
    # holds as many positions as the long one. A budget for two long rows admits the long
    # row and one short one at a time; counting the short rows by their own length would
    # have let several join.
    long = ask("A long question: " + "why is the sky blue and the sea green? " * 12, max_tokens=8)
    short = [ask(f"Hi {n}.", max_tokens=8) for n in range(4)]
    width = engine.kv_length(engine.row(long))
    assert width > 3 * max(engine.kv_length(engine.row(r)) for r in short)
    budget, engine.kv_budget = engine.kv_budget, 2 * width * engine.kv_token_bytes
    batcher = Batcher(lambda: engine)
    try:
        futures = [batcher.submit(None, r) for r in [long, *short]]
        results = [f.result(timeout=WAIT) for f in futures]
    finally:
        batcher.close()
        engine.kv_budget = budget
    assert results[0].batch_size <= 2
    alone = engine.generate(None, [long, *short])
    assert [r.text for r in results] == [r.text for r in alone if isinstance(r, GenResult)]


def test_a_row_larger_than_the_budget_still_runs_alone(engine: Engine) -> None:
    budget, engine.kv_budget = engine.kv_budget, 1
    batcher = Batcher(lambda: engine)
    try:
        result = batcher.submit(None, ask("Hello there.", max_tokens=3)).result(timeout=WAIT)
    finally:
        batcher.close()
        engine.kv_budget = budget
    assert result.completion_tokens >= 1 and result.batch_size == 1


def test_rows_that_leave_and_join_a_running_batch_keep_the_answers_they_have_alone(
    engine: Engine,
) -> None:
    # Rows leave at different steps (their own max_tokens), from the middle of the batch too;
    # newcomers join between steps, with prompts shorter than the batch's positions, then one
    # longer (the running rows get left padding), then more than the batch had room for, and
    # once the long one left (its padding dropped), a long one again.
    first = [ask(f"Tell me about number {n}.", max_tokens=3 + 2 * (n % 4)) for n in range(8)]
    long = "A long question: " + "why is the sky blue and the sea green? " * 12
    later = [
        (2, [ask("Hi."), ask("Short one.", max_tokens=5)]),
        (2, [ask(long, 6)]),
        (2, [ask(f"More rows, number {n}.", max_tokens=12 + n % 3) for n in range(12)]),
        (6, [ask(long + " Again?", 4), ask("And a short one.", 3)]),
    ]
    every = [*first, *(r for _, wave in later for r in wave)]
    expected = {id(r): engine.generate(None, [r])[0] for r in every}
    rows = {id(r): engine.row(r) for r in every}
    decoding, done = engine.start(None, [rows[id(r)] for r in first])
    assert decoding is not None and not done
    for steps, wave in later:
        for _ in range(steps):
            engine.step(decoding)
        new, _ = engine.start(None, [rows[id(r)] for r in wave])
        assert new is not None
        engine.join(decoding, new)
    while decoding.rows:
        engine.step(decoding)
    for request in every:
        want = expected[id(request)]
        assert isinstance(want, GenResult)
        got = rows[id(request)].result()
        assert (got.text, got.completion_tokens) == (want.text, want.completion_tokens)


@pytest.mark.parametrize("seed", range(12))
def test_random_arrivals_chunks_joins_and_leaves_keep_every_answer(
    engine: Engine, seed: int
) -> None:
    """What the batcher does, in a random order: groups of requests (two few-shot prefixes or
    none, short and long prompts and answers) arrive, run their prompts in chunks of random
    sizes, join the running batch and leave it as they finish; each answer is its answer
    alone."""
    import random

    rng = random.Random(seed)
    heads = [
        "You answer questions about facts. " + " ".join(f"Fact {i} is true." for i in range(20)),
        "You answer briefly. " + " ".join(f"Rule {i}: be kind." for i in range(20)),
    ]

    def request(k: int) -> GenRequest:
        head = rng.choice([*heads, None])
        system = ({"role": "system", "content": head},) if head else ()
        text = f"Tell me fact number {k}." + " Please." * rng.choice([0, 2, 12, 40])
        messages = (*system, {"role": "user", "content": text})
        return GenRequest(messages, rng.choice([1, 3, 8, 14, 70]), 0.0, 1.0, None, ())

    requests = [request(k) for k in range(rng.randint(6, 24))]
    alone = {id(r): engine.generate(None, [r])[0] for r in requests}
    pending, rows, prefilling, running = list(requests), {}, [], None
    while pending or prefilling or (running is not None and running.rows):
        if pending and rng.random() < 0.5:
            wave = [pending.pop(0) for _ in range(min(len(pending), rng.randint(1, 6)))]
            new = [engine.row(r) for r in wave]
            rows.update({id(r): row for r, row in zip(wave, new, strict=True)})
            prefilling += engine.prefills(None, new, rng.choice([16, 32, 256]))
        for prefill in list(prefilling):
            started = engine.advance(prefill, rng.choice([8, 16, 64, 300]))
            if started is None:
                continue
            prefilling.remove(prefill)
            engine.leave(started)
            if started.rows and running is not None and running.rows:
                engine.join(running, started)
            elif started.rows:
                running = started
        if running is not None and running.rows:
            engine.step(running)
    for request in requests:
        want = alone[id(request)]
        assert isinstance(want, GenResult)
        assert rows[id(request)].result().text == want.text
