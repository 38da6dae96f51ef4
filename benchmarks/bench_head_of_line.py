"""A short request's latency while a long one decodes, against its latency on an idle server.

Requests join the running batch between decoding steps, so a 4-token answer should take about
the time of its own 4 steps (each a little slower for the extra row), not the long answer's
1,000. This drives the engine's batcher directly, on SmolLM2-135M-Instruct by default:

    python benchmarks/bench_head_of_line.py [--model DIR] [--long 1000] [--short 4] [--runs 5]

It prints the median idle latency, the median latency under load, and their ratio (the target
is under 3x), and fails if the long request finished before the short ones were measured.

Then the long-prompt case (``--prompt 6000`` tokens; 0 skips it): prompts run in chunks between
decoding steps, so the short request's latency while that prompt runs should also stay under
3x its idle latency, and a running stream should pause for about a chunk, not the whole
prompt. It prints that ratio and the stream's largest gap between two pieces while the prompt
runs (against its median gap before). ``--chunk`` sets the prompt tokens per step.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from distill_server.engine.batcher import Batcher
from distill_server.engine.decode import Engine, GenRequest
from distill_server.models import ModelSource, base_sources


def request(prompt: str, tokens: int, on_text: Callable[[str], None] | None = None) -> GenRequest:
    messages = ({"role": "user", "content": prompt},)
    return GenRequest(messages, tokens, 0.0, 1.0, None, (), on_text=on_text, ignore_eos=True)


def latencies(batcher: Batcher, tokens: int, runs: int) -> list[float]:
    seconds = []
    for run in range(runs):
        began = time.perf_counter()
        result = batcher.submit(None, request(f"Say hello, {run}.", tokens)).result()
        seconds.append(time.perf_counter() - began)
        assert result.completion_tokens == tokens, result
    return seconds


def long_prompt(engine: Engine, tokens: int) -> tuple[str, int]:
    """A prompt of about ``tokens`` tokens (within the context), and its size."""
    sentence = "Point {}: the sky is blue, the grass is green and the sea is deep. "

    def size(text: str) -> int:
        return len(engine.row(request(text, 1)).prompt)

    each = size(sentence.format(0) * 20) / 20
    count = int(min(tokens, engine.context - 64) / each)
    text = "".join(sentence.format(i) for i in range(count))
    while size(text) > engine.context - 8:
        count -= 8
        text = "".join(sentence.format(i) for i in range(count))
    return text, size(text)


def prompt_case(batcher: Batcher, text: str, short: int, runs: int) -> tuple[float, bool]:
    """The short request's median latency while the long prompt runs; whether it overlapped."""
    future = batcher.submit(None, request(text, 1))
    time.sleep(0.5)
    loaded = statistics.median(latencies(batcher, short, runs))
    overlapped = not future.done()
    future.result()
    return loaded, overlapped


def stream_case(batcher: Batcher, text: str) -> tuple[float, float, float]:
    """A stream's median gap before the long prompt, its largest while it runs, the run's time."""
    stamps: list[float] = []
    streaming = threading.Event()

    def on_text(_: str) -> None:
        stamps.append(time.perf_counter())
        if len(stamps) >= 8:
            streaming.set()

    stream = batcher.submit(None, request("Tell me a very long story.", 100_000, on_text))
    streaming.wait()
    before = statistics.median(b - a for a, b in itertools.pairwise(list(stamps)))
    began = time.perf_counter()
    batcher.submit(None, request(text, 1)).result()
    ended = time.perf_counter()
    stream.cancel()
    during = [b for b in stamps if began <= b <= ended]
    gaps = [b - a for a, b in zip([began, *during], [*during, ended], strict=True)]
    return before, max(gaps), ended - began


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", type=Path, help="a Hugging Face model directory")
    parser.add_argument("--long", type=int, default=1000)
    parser.add_argument("--short", type=int, default=4)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prompt", type=int, default=6000, help="0 skips the long prompt")
    parser.add_argument("--chunk", type=int, help="prompt tokens per step (the engine's)")
    args = parser.parse_args()

    if args.model:
        source = ModelSource("model", args.model)
    else:
        [source] = base_sources(None).values()
    with tempfile.TemporaryDirectory() as cache:
        engine = Engine(replace(source, cache=Path(cache)))
        batcher = Batcher(lambda: engine, prefill_chunk=args.chunk)
        try:
            latencies(batcher, args.short, 2)  # warm up
            idle = statistics.median(latencies(batcher, args.short, args.runs))
            streaming = threading.Event()
            long = request(
                "Tell me a very long story.", args.long, on_text=lambda _: streaming.set()
            )
            began = time.perf_counter()
            future = batcher.submit(None, long)
            streaming.wait()
            loaded = statistics.median(latencies(batcher, args.short, args.runs))
            overlapped = not future.done()
            result = future.result()
            total = time.perf_counter() - began
            if args.prompt:
                text, size = long_prompt(engine, args.prompt)
                prompted, prompt_overlapped = prompt_case(batcher, text, args.short, args.runs)
                before, gap, prefill_s = stream_case(batcher, text)
        finally:
            batcher.close()
    print(f"{source.id}: a {args.short}-token request, {args.runs} runs each (median)")
    print(f"  idle server                          {idle * 1000:8.1f} ms")
    print(f"  while a {result.completion_tokens}-token request decodes     {loaded * 1000:8.1f} ms")
    print(f"  ratio                                {loaded / idle:8.2f}x  (target: under 3x)")
    print(f"  the long request took                {total:8.1f} s")
    if not overlapped:
        print("the long request ended before the short ones were measured: use a larger --long")
        return 1
    if args.prompt:
        chunk = args.chunk or engine.prefill_chunk
        print(f"a {size}-token prompt, run {chunk} tokens a step (context {engine.context})")
        print(f"  a {args.short}-token request while it runs  {prompted * 1000:8.1f} ms")
        print(f"  ratio to idle                        {prompted / idle:8.2f}x  (target: under 3x)")
        print(f"  a stream's median gap before it      {before * 1000:8.1f} ms")
        print(f"  the stream's largest gap while it ran{gap * 1000:8.1f} ms")
        print(f"  the prompt took, beside the stream   {prefill_s:8.1f} s")
        if not prompt_overlapped:
            print("the prompt ran before the short requests were measured: use a larger --prompt")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
