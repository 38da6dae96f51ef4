"""Chunked prefill with the tiny model: a long prompt runs a chunk per step, between the
running rows' decoding steps, and every answer is the one its request gets decoded alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import pytest

from distill_server.engine.batcher import Batcher
from distill_server.engine.decode import Decoding, Engine, GenRequest, GenResult, Row
from distill_server.models import ModelSource

WAIT = 120  # seconds; generous, for a loaded CI machine
CHUNK = 16
LONG = " ".join(f"Point {i}: the sky is blue and the grass is green." for i in range(30))
"""A prompt of about 500 tokens: over thirty chunks of ``CHUNK``."""
SYSTEM = "You answer questions about facts. " + " ".join(f"Fact {i} is true." for i in range(30))


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Engine:
    return Engine(ModelSource("tiny", tiny_model))


def ask(prompt: str, max_tokens: int = 8, system: str | None = None, **options: Any) -> GenRequest:
    settings: dict[str, Any] = {"temperature": 0.0, "top_p": 1.0, "seed": None, "stop": ()}
    settings.update(options)
    head = ({"role": "system", "content": system},) if system else ()
    return GenRequest((*head, {"role": "user", "content": prompt}), max_tokens, **settings)


def alone(engine: Engine, request: GenRequest) -> GenResult:
    """The request decoded by itself, its prompt run whole."""
    [result] = engine.generate(None, [request])
    assert isinstance(result, GenResult), result
    return result


def chunked(engine: Engine, rows: list[Row], chunk: int = CHUNK) -> Decoding:
    """Run the prompts of ``rows`` (one group) ``chunk`` tokens at a time."""
    [prefill] = engine.prefills(None, rows)
    decoding = None
    runs = 0
    while decoding is None:
        decoding = engine.advance(prefill, chunk)
        runs += 1
    assert runs > 3, "the prompt ran in fewer chunks than the test means"
    return decoding


def finish(engine: Engine, decoding: Decoding) -> list[GenResult]:
    rows = list(decoding.rows)
    engine.leave(decoding)
    while decoding.rows:
        engine.step(decoding)
    return [row.result() for row in rows]


@pytest.fixture
def log(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str]]]:
    """The engine's calls in order: ("chunk", the rows' prompts) and ("step", the rows')."""
    events: list[tuple[str, list[str]]] = []
    advance, step = engine.advance, engine.step

    def last(rows: list[Row]) -> list[str]:
        return [row.request.messages[-1]["content"] for row in rows]

    def logged_advance(prefill: Any, tokens: int) -> Decoding | None:
        events.append(("chunk", last(prefill.rows)))
        return advance(prefill, tokens)

    def logged_step(decoding: Decoding) -> list[Row]:
        events.append(("step", last(decoding.rows)))
        return step(decoding)

    monkeypatch.setattr(engine, "advance", logged_advance)
    monkeypatch.setattr(engine, "step", logged_step)
    return events


@pytest.fixture
def batcher(engine: Engine, log: list[Any]) -> Iterator[Batcher]:
    batcher = Batcher(lambda: engine, prefill_chunk=CHUNK)
    yield batcher
    batcher.close()


def test_a_prompt_run_in_chunks_decodes_what_it_decodes_run_whole(engine: Engine) -> None:
    request = ask(LONG, 12)
    [result] = finish(engine, chunked(engine, [engine.row(request)]))
    assert len(engine.row(request).prompt) > 20 * CHUNK
    expected = alone(engine, request)
    assert result.text == expected.text and result.completion_tokens == 12


def test_a_shared_prefix_run_in_chunks_keeps_each_rows_answer(engine: Engine) -> None:
    requests = [ask(f"Question {i}: " + "why? " * (i * 7), 8, SYSTEM) for i in range(3)]
    rows = [engine.row(request) for request in requests]
    [prefill] = engine.prefills(None, rows)
    assert len(prefill.shared) > 8 * CHUNK  # the prefix itself runs in several chunks
    results = finish(engine, chunked(engine, rows, CHUNK))
    assert [r.text for r in results] == [alone(engine, r).text for r in requests]


def test_the_kv_cache_takes_the_room_of_the_prompt_run_whole(engine: Engine) -> None:
    requests = [ask(f"Question {i}: " + "why? " * (i * 7), 4, SYSTEM) for i in range(3)]
    whole, _ = engine.start(None, [engine.row(request) for request in requests])
    pieces = chunked(engine, [engine.row(request) for request in requests])
    assert whole is not None
    rooms = [[tuple(layer._key_room.shape) for layer in d.past.layers] for d in (whole, pieces)]
    assert rooms[0] == rooms[1]


def test_a_row_cancelled_mid_prefill_leaves_and_the_others_keep_their_answers(
    engine: Engine,
) -> None:
    requests = [ask(f"Question {i}: " + "why? " * (i * 40), 6, SYSTEM) for i in range(3)]
    flag = threading.Event()
    cancels: list[Callable[[], bool]] = [lambda: False, lambda: False, flag.is_set]
    rows = [engine.row(r, cancelled) for r, cancelled in zip(requests, cancels, strict=True)]
    [prefill] = engine.prefills(None, rows)
    columns = prefill.ids.shape[1]
    for _ in range(len(prefill.shared) // CHUNK + 2):
        assert engine.advance(prefill, CHUNK) is None
    flag.set()
    assert engine.drop_cancelled(prefill) == [rows[2]] and rows[2].finish == "cancelled"
    # The longest prompt left: the columns only it needed are never run.
    assert len(prefill.rows) == 2 and prefill.ids.shape[1] < columns
    assert prefill.past.layers[0].keys.shape[0] == 2
    decoding = None
    while decoding is None:
        decoding = engine.advance(prefill, CHUNK)
    results = finish(engine, decoding)
    assert [r.text for r in results] == [alone(engine, r).text for r in requests[:2]]


def test_running_rows_keep_stepping_between_the_chunks_of_a_long_prompt(
    batcher: Batcher, engine: Engine, log: list[tuple[str, list[str]]]
) -> None:
    streamed = threading.Event()
    stream = batcher.submit(
        None, ask("Stream on.", 10_000, ignore_eos=True, on_text=lambda _: streamed.set())
    )
    assert streamed.wait(WAIT)
    long = batcher.submit(None, ask(LONG, 4))
    time.sleep(0.05)
    short = batcher.submit(None, ask("Hello?", 4))
    short_result = short.result(WAIT)
    long_result = long.result(WAIT)
    stream.cancel()

    chunks = [k for k, (kind, rows) in enumerate(log) if kind == "chunk" and LONG in rows]
    first, last = chunks[0], chunks[-1]
    assert len(chunks) > 20
    between = [rows for kind, rows in log[first:last] if kind == "step"]
    # The running stream stepped between every two chunks of the long prompt...
    assert len(between) >= len(chunks) - 1
    assert all("Stream on." in rows for rows in between)
    # ...and the short request came, ran its prompt and finished while the long one ran.
    short_steps = [k for k, (kind, rows) in enumerate(log) if kind == "step" and "Hello?" in rows]
    assert first < short_steps[0] and short_steps[-1] < last
    assert short_result.text == alone(engine, ask("Hello?", 4)).text
    assert long_result.text == alone(engine, ask(LONG, 4)).text


def test_a_request_cancelled_mid_prefill_runs_no_more_chunks(
    batcher: Batcher, log: list[tuple[str, list[str]]]
) -> None:
    called: list[str] = []
    long = batcher.submit(None, ask(LONG, 4, on_text=called.append))
    deadline = time.monotonic() + WAIT
    while sum(LONG in rows for _, rows in list(log)) < 3 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert long.cancel()
    time.sleep(0.3)  # a chunk may still be under way
    seen = sum(LONG in rows for _, rows in list(log))
    result = batcher.submit(None, ask("Short?", 4)).result(WAIT)
    assert sum(LONG in rows for _, rows in log) == seen, "the cancelled prompt kept running"
    assert result.batch_size == 1 and called == []
    with pytest.raises(CancelledError):
        long.result()


def test_prompts_run_together_by_length_so_a_short_one_waits_for_no_long_one(
    engine: Engine,
) -> None:
    requests = [ask("Hi."), ask(LONG), ask("Hello there."), ask(LONG + " And more.")]
    rows = [engine.row(request) for request in requests]
    groups = engine.prefills(None, rows, CHUNK * 4)
    assert [[rows.index(row) for row in p.rows] for p in groups] == [[0, 2], [1, 3]]
    assert len(engine.prefills(None, rows)) == 1  # run whole, they all go together


def test_a_burst_beside_a_stream_runs_its_prompts_a_whole_chunk_a_step(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More rows waiting for their prompts than decoding: a step gives them the whole chunk,
    not only what runs in one decoding step's time (a thin forward pass costs about as much
    as a wide one)."""
    steps: list[list[tuple[str, int]]] = [[]]
    advance, step = engine.advance, engine.step

    def logged_advance(prefill: Any, tokens: int) -> Decoding | None:
        steps[-1].append((prefill.rows[0].request.messages[-1]["content"], tokens))
        return advance(prefill, tokens)

    def logged_step(decoding: Decoding) -> list[Row]:
        steps.append([])
        return step(decoding)

    monkeypatch.setattr(engine, "advance", logged_advance)
    monkeypatch.setattr(engine, "step", logged_step)
    batcher = Batcher(lambda: engine, prefill_chunk=4 * CHUNK)
    try:
        streamed = threading.Event()
        stream = batcher.submit(
            None, ask("Stream on.", 10_000, ignore_eos=True, on_text=lambda _: streamed.set())
        )
        assert streamed.wait(WAIT)
        time.sleep(0.2)  # a few steps: the decoding step's time is measured
        burst = [f"Burst {i}: " + LONG for i in range(4)]
        futures = [batcher.submit(None, ask(prompt, 2)) for prompt in burst]
        for future in futures:
            future.result(WAIT)
        stream.cancel()
    finally:
        batcher.close()
    ran = [sum(t for prompt, t in s if prompt.startswith("Burst")) for s in steps]
    ran = [tokens for tokens in ran if tokens]
    assert ran[0] == 4 * CHUNK, ran  # the whole chunk, with the stream still decoding
