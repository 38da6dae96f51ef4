"""Decoding a batch of few-shot prompts: the shared prefix once, against every row's own copy.

A teacher's requests start with the same system message and worked examples; only the last
message differs. The engine runs that common prefix once per batch and copies its KV cache to
every row, and keeps its KV cache in preallocated room instead of concatenating on every step.
This times one batch of the example project's hardware-order teacher prompts three ways, on
SmolLM2-135M-Instruct, in this process:

- ``engine``: as shipped;
- ``concatenating cache``: the shared prefix, with transformers' own ``DynamicLayer``;
- ``no shared prefix``: every row runs its whole prompt (the prefix is switched off).

    python benchmarks/bench_shared_prefix.py [--batch 64] [--max-tokens 36]

Each configuration must give the same answers (greedy decoding); the script says so or fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path

from transformers.cache_utils import DynamicLayer

from distill_server.engine import decode as engine
from distill_server.models import base_sources
from pytest_distill.evals.loaders import load_file

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "example_project" / "evals" / "hardware_requests.eval.yaml"


@contextmanager
def patched(name: str, value: object) -> Iterator[None]:
    old = getattr(engine, name)
    setattr(engine, name, value)
    try:
        yield
    finally:
        setattr(engine, name, old)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=36)
    args = parser.parse_args()

    suite = load_file(SUITE)
    [source] = base_sources(None).values()
    with tempfile.TemporaryDirectory() as cache:
        eng = engine.Engine(replace(source, cache=Path(cache)))
        requests = [
            engine.GenRequest(
                tuple(suite.messages_for(case, "teacher")), args.max_tokens, 0.0, 1.0, None, ()
            )
            for case in suite.cases[: args.batch]
        ]
        eng.generate(None, requests[:2])  # warm up
        configurations: dict[str, list[AbstractContextManager[None]]] = {
            "engine": [],
            "concatenating cache": [patched("_RoomyLayer", DynamicLayer)],
            "no shared prefix": [patched("MIN_SHARED_PREFIX", 10**9)],
        }
        timings, answers = {}, {}
        for name, patches in configurations.items():
            with ExitStack() as stack:
                for patch in patches:
                    stack.enter_context(patch)
                started = time.perf_counter()
                results = eng.generate(None, requests)
                timings[name] = time.perf_counter() - started
            answers[name] = [getattr(r, "text", r) for r in results]
    prompt = sum(r.prompt_tokens for r in results if not isinstance(r, Exception))
    print(f"{len(requests)} teacher prompts, {prompt / len(requests):.0f} tokens each on average")
    for name, seconds in timings.items():
        print(f"  {name:<40} {seconds:6.2f} s  ({timings[name] / timings['engine']:.2f}x)")
    same = all(texts == answers["engine"] for texts in answers.values())
    print("answers identical in all three:", same)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
