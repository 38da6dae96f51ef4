"""A short request's latency while a long one decodes, against its latency on an idle server.

Requests join the running batch between decoding steps, so a 4-token answer should take about
the time of its own 4 steps (each a little slower for the extra row), not the long answer's
1,000. This drives the engine's batcher directly, on SmolLM2-135M-Instruct by default:

    python benchmarks/bench_head_of_line.py [--model DIR] [--long 1000] [--short 4] [--runs 5]

It prints the median idle latency, the median latency under load, and their ratio (the target
is under 3x), and fails if the long request finished before the short ones were measured.
"""

from __future__ import annotations

import argparse
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


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", type=Path, help="a Hugging Face model directory")
    parser.add_argument("--long", type=int, default=1000)
    parser.add_argument("--short", type=int, default=4)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    if args.model:
        source = ModelSource("model", args.model)
    else:
        [source] = base_sources(None).values()
    with tempfile.TemporaryDirectory() as cache:
        engine = Engine(replace(source, cache=Path(cache)))
        batcher = Batcher(lambda: engine)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
