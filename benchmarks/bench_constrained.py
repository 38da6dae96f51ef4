"""Constrained decoding's cost per token against free decoding, on the same prompts.

One process, one model (SmolLM2-135M-Instruct, converted once under ``--data-dir``; or the
tiny test model with ``--tiny``), greedy. Each workload decodes the same prompts twice:
free, and under a JSON Schema (an object holding a long list of strings: keys, quotes,
separators and free text, a grammar that does not end before ``--max-tokens``). Every row
decodes exactly ``--max-tokens`` tokens (``ignore_eos``), so both ways run batches of the
same size for the same number of steps. It prints, at batch 1 and batch 8 (``--batch``):

- decode ms per token (the steps after the first token), free and constrained, and their
  ratio;
- the grammar's own cost: ms per token computing and applying its masks, and their share of
  the constrained steps (the ratio above also holds the machine's noise; this does not);
- the one-off cost of the first constrained request on a model (llguidance's tokenizer) and
  of a grammar's first use (compiling it).

    python benchmarks/bench_constrained.py [--tiny] [--max-tokens 64] [--batch 1 8]

Each way runs ``--repeats`` times, alternating, and the fastest run counts (the machine may
be busy with other work: compare figures within one run, not across runs).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from distill_server.engine import decode
from distill_server.engine.constrain import Constraint
from distill_server.models import ModelSource, base_sources

REPO = Path(__file__).resolve().parents[1]
SCHEMA = {
    "type": "object",
    "properties": {
        "topic": {"type": "string"},
        "facts": {"type": "array", "items": {"type": "string"}, "minItems": 1000},
    },
    "required": ["topic", "facts"],
    "additionalProperties": False,
}
TOPICS = ["cats", "rain", "bread", "trains", "maps", "tea", "snow", "bees", "rivers", "copper"]


def prompts(batch: int) -> list[str]:
    return [f"List facts about {TOPICS[k % len(TOPICS)]} as JSON." for k in range(batch)]


def decode_once(
    engine: decode.Engine, texts: list[str], tokens: int, constraint: Constraint | None
) -> tuple[float, int, float]:
    """Decode ``texts`` together; returns decode seconds, decoded tokens (after each row's
    first) and seconds spent in the grammar's masks."""
    requests = [
        decode.GenRequest(
            ({"role": "user", "content": text},),
            tokens,
            0.0,
            1.0,
            None,
            (),
            ignore_eos=True,
            constraint=constraint,
        )
        for text in texts
    ]
    rows = [engine.row(request) for request in requests]
    masking = [0.0]
    mask = engine.grammars.mask

    def timed_mask(*args: Any) -> None:
        began = time.perf_counter()
        mask(*args)
        masking[0] += time.perf_counter() - began

    engine.grammars.mask = timed_mask  # type: ignore[method-assign]
    try:
        decoding, _ = engine.start(None, rows)
        masking[0] = 0.0  # the first token's mask belongs to the prefill
        began = time.perf_counter()
        while decoding is not None and decoding.rows:
            engine.step(decoding)
        seconds = time.perf_counter() - began
    finally:
        del engine.grammars.mask
    done = sum(len(row.tokens) - 1 for row in rows)
    for row in rows:
        assert row.error is None, row.error
        assert len(row.tokens) == tokens, (len(row.tokens), row.finish)
    return seconds, done, masking[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny test model, not SmolLM2")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=REPO / ".distill" / "server",
        help="where the converted model is kept (default: %(default)s)",
    )
    args = parser.parse_args()

    began = time.perf_counter()
    if args.tiny:
        sys.path.insert(0, str(REPO / "tests"))
        from tiny_model import create_tiny_model

        directory = Path(tempfile.mkdtemp(prefix="tiny-model-"))
        source = ModelSource("tiny", create_tiny_model(directory), device="cpu")
    else:
        [default] = base_sources(None).values()
        source = replace(default, cache=args.data_dir / "converted", device="cpu")
    engine = decode.Engine(source)
    print(f"model {source.id} loaded in {time.perf_counter() - began:.1f} s", flush=True)

    began = time.perf_counter()
    engine.grammars.tokenizer  # noqa: B018  # built on the first constrained request
    print(f"llguidance tokenizer built in {time.perf_counter() - began:.2f} s (once per model)")
    constraint = Constraint.json_schema(SCHEMA)
    began = time.perf_counter()
    engine.grammars.matcher(constraint)
    print(f"grammar compiled in {1000 * (time.perf_counter() - began):.1f} ms (once per text)")
    decode_once(engine, prompts(1), 4, None)  # warm up both ways
    decode_once(engine, prompts(1), 4, constraint)

    print(f"\n{args.max_tokens} tokens a row, greedy, best of {args.repeats}")
    print(
        f"{'batch':>5} {'free ms/tok':>12} {'json ms/tok':>12} {'ratio':>6} "
        f"{'mask ms/tok':>12} {'share':>6}"
    )
    for batch in args.batch:
        texts = prompts(batch)
        free: list[float] = []
        constrained: list[tuple[float, float, float]] = []
        for _ in range(args.repeats):
            seconds, done, _ = decode_once(engine, texts, args.max_tokens, None)
            free.append(seconds / done)
            seconds, done, masking = decode_once(engine, texts, args.max_tokens, constraint)
            constrained.append((seconds / done, masking / done, masking / seconds))
        plain = min(free)
        per_token, mask_per_token, share = min(constrained)
        print(
            f"{batch:>5} {1000 * plain:>12.3f} {1000 * per_token:>12.3f} "
            f"{per_token / plain:>6.2f} {1000 * mask_per_token:>12.3f} {share:>6.0%}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
