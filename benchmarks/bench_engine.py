"""The decoding engine against this CPU's limits and against Hugging Face ``generate``.

One process, one model in memory (SmolLM2-135M-Instruct, converted once under
``--data-dir``), the same prompts both ways, greedy, and every row decoding exactly
``--max-tokens`` tokens (``ignore_eos`` in the engine, ``min_new_tokens`` in ``generate``) so
that both decode the same number of tokens. It prints:

- the CPU's limits, measured here: fp32 ``torch.mm`` FLOP rate on the model's own shapes
  (a decoding step of 32 rows, a prefill chunk) and on a large square, with torch's default
  threads; memory bandwidth from a large copy and a large sum;
- prefill and decode tokens/s of the engine (``Engine.row``/``start``/``step``, what
  ``Engine.generate`` runs) and of ``model.generate`` (left-padded, one call per workload) on
  (a) plain batches of distinct short prompts at batch 1, 8 and 32, and (b) the main job's
  own workload: the example project's teacher prompts (a long system message and few-shot
  turns shared by a suite's cases, then each case's own message; both suites mixed) and its
  student prompts (short, no few-shot), 64 rows each;
- the decode FLOP limit at batch 32 (2 x the weights each token multiplies by, plus attention
  over the context, at the measured matmul rate) and the engine's and ``generate``'s decode
  rates as a fraction of it; and what the model's own matrix products alone reach, each on its
  own weights in the model's order (out of cache, unlike one shape repeated): the most a
  decoding step of those products can do, and the engine's and ``generate``'s share of it;
- where a decoding step of that batch spends its time (torch's profiler): the matrix
  products, attention, everything else; with ``--formats``, the products with the weights
  prepacked for MKL, reordered for oneDNN, or in bf16: the time, the memory, the answers.

    python benchmarks/bench_engine.py [--quick] [--formats] [--max-tokens 32]
        [--data-dir .distill/server]

Prefill time is until each one's first token is picked (``generate``'s first call of its
logits processors); decode time is the rest, and its tokens exclude that first one. The
machine may be busy with other work: compare figures within one run, not across runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

# As the server's process runs it (``distill_server.cli``): torch's grouped-query attention,
# not transformers' copies of the key and value heads (``generate`` below gets the same).
# ``--repeat-kv`` measures transformers' default instead.
if "--repeat-kv" not in sys.argv:
    os.environ.setdefault("TRANSFORMERS_SDPA_FORCE_GQA", "1")
from typing import Any

import torch

from distill_server.engine import decode as engine
from distill_server.models import base_sources
from distill_server.weights.loading import encode, render
from pytest_distill.evals.loaders import load_file

REPO = Path(__file__).resolve().parents[1]
EVALS = REPO / "example_project" / "evals"
TOPICS = [
    "cats", "rain", "bread", "trains", "maps", "tea", "snow", "bees", "rivers", "copper",
    "owls", "bicycles", "volcanoes", "salt", "clocks", "whales", "glass", "deserts", "paper",
    "bridges", "moss", "thunder", "honey", "lighthouses", "ice", "ferns", "kites", "lemons",
    "caves", "ink", "tides", "wool",
]  # fmt: skip
Messages = tuple[dict[str, str], ...]


@dataclass(frozen=True, slots=True)
class Run:
    """One way of decoding one workload: times and tokens."""

    prefill_s: float
    decode_s: float
    prompt_tokens: int
    """Every row's prompt tokens (a shared prefix counts once per row: what was served)."""
    decode_tokens: int
    """Tokens decoded after each row's first."""
    answers: list[list[int]]

    @property
    def prefill_rate(self) -> float:
        return self.prompt_tokens / self.prefill_s

    @property
    def decode_rate(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s else float("nan")

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_s


# -- the CPU's limits ---------------------------------------------------------------------


def best_seconds(work: Callable[[], object], budget_s: float, least: int = 3) -> float:
    """The fastest of repeated runs of ``work`` (at least ``least``, about ``budget_s`` in all):
    on a busy machine the fastest is the closest to what the hardware can do."""
    work()  # warm up
    best, spent, runs = float("inf"), 0.0, 0
    while runs < least or spent < budget_s:
        began = time.perf_counter()
        work()
        took = time.perf_counter() - began
        best, spent, runs = min(best, took), spent + took, runs + 1
    return best


def matmul_rate(m: int, k: int, n: int, budget_s: float) -> float:
    """fp32 FLOP/s of ``torch.mm`` of (m, k) by (k, n)."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    out = torch.empty(m, n)
    seconds = best_seconds(lambda: torch.mm(a, b, out=out), budget_s)
    return 2 * m * k * n / seconds


def bandwidth(mib: int, budget_s: float) -> tuple[float, float]:
    """Bytes/s of a large copy (read and write counted) and of a large sum (read)."""
    source = torch.ones(mib * 2**18)  # fp32: 2**18 per MiB
    target = torch.empty_like(source)
    copy = best_seconds(lambda: target.copy_(source), budget_s)
    total = best_seconds(lambda: source.sum(), budget_s)
    size = source.numel() * source.element_size()
    return 2 * size / copy, size / total


# -- the workloads ------------------------------------------------------------------------


def plain(rows: int) -> list[Messages]:
    return [
        ({"role": "user", "content": f"In one short sentence, say something true about {t}."},)
        for t in TOPICS[:rows]
    ]


def suites(role: str, rows: int) -> list[Messages]:
    """``rows`` cases' prompts for ``role``, the example project's suites taken in turn."""
    loaded = [load_file(path) for path in sorted(EVALS.glob("*.eval.yaml"))]
    per = -(-rows // len(loaded))
    columns = [[tuple(s.messages_for(c, role)) for c in s.cases[:per]] for s in loaded]
    mixed = [column[k] for k in range(per) for column in columns if k < len(column)]
    return mixed[:rows]


# -- the two ways of decoding -------------------------------------------------------------


def run_engine(eng: engine.Engine, prompts: Sequence[Messages], new: int) -> Run:
    requests = [engine.GenRequest(m, new, 0.0, 1.0, None, (), ignore_eos=True) for m in prompts]
    rows = [eng.row(request) for request in requests]
    began = time.perf_counter()
    decoding, _ = eng.start(None, rows)
    prefilled = time.perf_counter()
    while decoding is not None and decoding.rows:
        eng.step(decoding)
    ended = time.perf_counter()
    for row in rows:
        if row.error is not None:
            raise row.error
    produced = sum(len(row.tokens) for row in rows)
    assert produced == len(rows) * new, (produced, len(rows) * new)
    return Run(
        prefilled - began,
        ended - prefilled,
        sum(len(row.prompt) for row in rows),
        produced - len(rows),
        [row.tokens for row in rows],
    )


class FirstCall:
    """A logits processor that notes when ``generate`` first calls it: its prefill is over."""

    def __init__(self) -> None:
        self.at: float | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.at is None:
            self.at = time.perf_counter()
        return scores


def run_generate(
    eng: engine.Engine, prompts: Sequence[Messages], new: int, threads: int | None = None
) -> Run:
    from transformers import LogitsProcessorList

    tokenizer, model = eng.tokenizer, eng.base
    encoded = [encode(tokenizer, render(tokenizer, list(m), True)) for m in prompts]
    width = max(len(ids) for ids in encoded)
    pad = int(tokenizer.pad_token_id)
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
    first = FirstCall()
    default = torch.get_num_threads()
    torch.set_num_threads(threads or default)
    began = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=pad,
            logits_processor=LogitsProcessorList([first]),
        )
    ended = time.perf_counter()
    torch.set_num_threads(default)
    assert first.at is not None
    answers = out[:, width:].tolist()
    assert all(len(a) == new for a in answers)
    return Run(
        first.at - began,
        ended - first.at,
        sum(len(e) for e in encoded),
        len(prompts) * (new - 1),
        answers,
    )


def same_until_eos(ours: list[int], theirs: list[int], eos: frozenset[int]) -> bool:
    """Equal up to our first end-of-turn token (``generate`` is kept from choosing it)."""
    end = next((k for k, token in enumerate(ours) if token in eos), len(ours))
    return ours[:end] == theirs[:end]


# -- FLOPs --------------------------------------------------------------------------------


def model_matmuls_rate(model: Any, rows: int, budget_s: float) -> float:
    """FLOP/s of a decoding step's matrix products alone: every ``nn.Linear`` of the model in
    its order, on its own weights, for ``rows`` rows (what a step must do at the least; no
    attention, norms or sampling). Unlike one shape repeated, the weights do not stay in the
    cache between products, as in a real step."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {m.in_features: torch.randn(rows, m.in_features) for m in linears}
    flops = 2 * rows * sum(m.weight.numel() for m in linears)

    def step() -> None:
        with torch.inference_mode():
            for m in linears:
                torch.nn.functional.linear(inputs[m.in_features], m.weight)

    return flops / best_seconds(step, budget_s)


def step_profile(eng: engine.Engine, rows: int, steps: int = 16) -> tuple[float, dict[str, float]]:
    """Where a decoding step of ``rows`` plain prompts spends its time: the unprofiled seconds
    a step, then torch's profiler over ``steps`` more (after 6 untimed), seconds a step of its
    matrix products, its attention and everything else (norms, rotary embeddings, residuals,
    picking the tokens, Python), by operators' own CPU time."""
    from torch.profiler import ProfilerActivity, profile

    requests = [
        engine.GenRequest(m, 2 * steps + 8, 0.0, 1.0, None, (), ignore_eos=True)
        for m in plain(rows)
    ]
    decoding, _ = eng.start(None, [eng.row(request) for request in requests])
    assert decoding is not None
    for _ in range(6):
        eng.step(decoding)
    began = time.perf_counter()
    for _ in range(steps):
        eng.step(decoding)
    wall = (time.perf_counter() - began) / steps
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        for _ in range(steps):
            eng.step(decoding)
    while decoding.rows:
        eng.step(decoding)
    parts = {"matrix products": 0.0, "attention": 0.0, "everything else": 0.0}
    for event in profiled.key_averages():
        part = (
            "matrix products"
            if event.key in ("aten::mm", "aten::addmm")
            else "attention"
            if "scaled_dot_product" in event.key
            else "everything else"
        )
        parts[part] += event.self_cpu_time_total / 1e6 / steps
    return wall, parts


def product_formats(model: Any, rows: int, budget_s: float) -> list[tuple[str, float, float, str]]:
    """The model's matrix products for ``rows`` rows (as ``model_matmuls_rate``) with the
    weights in other formats torch can multiply by: seconds a step, the formats' bytes
    against the fp32 weights', and whether the first product's result is the same. Each is
    built, timed and freed in turn; a format this build of torch lacks is left out."""
    import torch.nn.functional as F

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    weights = [m.weight.detach() for m in linears]
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1]) for w in weights}
    plain_bytes = sum(w.numel() * w.element_size() for w in weights)
    first = F.linear(inputs[weights[0].shape[1]], weights[0])
    found: list[tuple[str, float, float, str]] = []

    def timed(
        name: str, packed: list[Any], run: Callable[[Any, Any, Any], Any], size: float
    ) -> None:
        def step() -> None:
            with torch.inference_mode():
                for w, p in zip(weights, packed, strict=True):
                    run(inputs[w.shape[1]], p, w)

        with torch.inference_mode():
            out = run(inputs[weights[0].shape[1]], packed[0], weights[0]).float()
        diff = float((out - first).abs().max())
        same = "bit-identical" if diff == 0 else f"differs by up to {diff:.1e}"
        found.append((name, best_seconds(step, budget_s), size, same))

    timed("fp32, as served (F.linear)", weights, lambda x, p, w: F.linear(x, p), 1.0)
    try:
        mkl = torch.ops.mkl
        packed = [mkl._mkl_reorder_linear_weight(w, rows) for w in weights]
        size = sum(p.numel() * p.element_size() for p in packed) / plain_bytes
        timed(
            "fp32, MKL prepacked (inductor's freezing)",
            packed,
            lambda x, p, w: mkl._mkl_linear(x, p, w, None, rows),
            size,
        )
        del packed
    except (AttributeError, RuntimeError):
        pass
    try:
        dnn = torch.ops.mkldnn

        def reordered(name: str, formatted: list[torch.Tensor], size: float) -> None:
            packed = [dnn._reorder_linear_weight(w, rows) for w in formatted]
            linear = dnn._linear_pointwise
            timed(name, packed, lambda x, p, w: linear(x, p, None, "none", [], ""), size)

        reordered("fp32, oneDNN reordered", weights, 1.0)
        half = [w.to(torch.bfloat16) for w in weights]
        inputs.update({k: v.to(torch.bfloat16) for k, v in list(inputs.items())})
        timed("bf16 (changes the answers)", half, lambda x, p, w: F.linear(x, p), 0.5)
        reordered("bf16, oneDNN reordered (changes the answers)", half, 0.5)
    except (AttributeError, RuntimeError):
        pass
    return found


def linear_weights(model: Any) -> int:
    """Weights each token multiplies by: every ``nn.Linear`` (the output head included)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def flops_per_token(model: Any, context: float) -> float:
    """2 x the weights used, plus attention's scores and weighted sum over ``context``."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = 4 * config.num_hidden_layers * config.num_attention_heads * head_dim * context
    return float(2 * linear_weights(model) + attention)


# -- the report ---------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows and tokens")
    parser.add_argument(
        "--repeat-kv",
        action="store_true",
        help="transformers' default attention, which copies the key and value heads",
    )
    parser.add_argument("--max-tokens", type=int, help="tokens each row decodes (default 32)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=REPO / ".distill" / "server",
        help="where the converted model is kept (default: %(default)s)",
    )
    parser.add_argument(
        "--formats",
        action="store_true",
        help="also time the model's products with prepacked, reordered and bf16 weights",
    )
    parser.add_argument(
        "--generate-threads",
        type=int,
        help="torch threads for generate (default: torch's default, what a caller gets)",
    )
    args = parser.parse_args()
    new = args.max_tokens or (8 if args.quick else 32)
    batches = [1, 8] if args.quick else [1, 8, 32]
    job_rows = 16 if args.quick else 64
    budget = 0.3 if args.quick else 1.0

    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, {os.cpu_count()} CPUs", flush=True)
    [source] = base_sources(None).values()
    began = time.perf_counter()
    eng = engine.Engine(replace(source, cache=args.data_dir / "converted", device="cpu"))
    print(f"model loaded in {time.perf_counter() - began:.1f} s", flush=True)
    config = eng.base.config
    hidden, inter = config.hidden_size, config.intermediate_size

    # The CPU's limits: measured before and after the workloads, the faster of the two kept
    # (other work on the machine may slow either).
    shapes = {
        "decode step, 32 rows: (32x576)(576x1536)": (32, hidden, inter),
        "decode step, 32 rows: (32x1536)(1536x576)": (32, inter, hidden),
        "prefill chunk: (256x576)(576x1536)": (256, hidden, inter),
        "large square: (2048x2048)(2048x2048)": (2048, 2048, 2048),
    }
    mib = 256 if args.quick else 512

    def limits() -> tuple[dict[str, float], float, float, float]:
        rates = {name: matmul_rate(*shape, budget) for name, shape in shapes.items()}
        steps = model_matmuls_rate(eng.base, max(batches), budget)
        return (rates, *bandwidth(mib, budget), steps)

    before = limits()

    # The workloads, each run both ways in turn.
    workloads: dict[str, list[Messages]] = {f"plain, batch {b}": plain(b) for b in batches}
    workloads[f"teacher prompts, {job_rows} rows"] = suites("teacher", job_rows)
    workloads[f"student prompts, {job_rows} rows"] = suites("student", job_rows)
    run_engine(eng, plain(2), 4)  # warm up both
    run_generate(eng, plain(2), 4)
    results: dict[str, tuple[Run, Run]] = {}
    for name, prompts in workloads.items():
        ours = run_engine(eng, prompts, new)
        theirs = run_generate(eng, prompts, new, args.generate_threads)
        results[name] = (ours, theirs)
        print(
            f"  ran {name}: {ours.total_s:.1f} s ours, {theirs.total_s:.1f} s generate", flush=True
        )

    after = limits()
    rates = {name: max(before[0][name], after[0][name]) for name in shapes}
    copy_bw, sum_bw = max(before[1], after[1]), max(before[2], after[2])
    step_rate = max(before[3], after[3])
    decode_rate = min(list(rates.values())[:2])  # the slower of a decoding step's two shapes
    peak = max(rates.values())

    print()
    print(f"CPU limits ({threads} threads, fastest of repeated runs before and after)")
    for name, rate in rates.items():
        print(f"  matmul {name:<44} {rate / 1e9:7.1f} GFLOP/s")
    print(
        f"  memory: copy (read + write) {copy_bw / 1e9:.1f} GB/s;"
        f" sum (read) {sum_bw / 1e9:.1f} GB/s"
    )

    print()
    print(f"Workloads (greedy, {new} tokens per row; tok/s; x = ours / generate)")
    head = (
        f"  {'workload':<27} {'prompt':>6} {'prefill ours':>12} {'generate':>9} {'x':>5}"
        f" {'decode ours':>12} {'generate':>9} {'x':>5} {'total s ours':>12} {'generate':>9}"
        f" {'x':>5} {'same':>6}"
    )
    print(head)
    for name, (ours, theirs) in results.items():
        rows = len(ours.answers)
        same = sum(
            same_until_eos(a, b, eng._eos)
            for a, b in zip(ours.answers, theirs.answers, strict=True)
        )
        print(
            f"  {name:<27} {ours.prompt_tokens / rows:6.0f}"
            f" {ours.prefill_rate:12.0f} {theirs.prefill_rate:9.0f}"
            f" {ours.prefill_rate / theirs.prefill_rate:5.2f}"
            f" {ours.decode_rate:12.0f} {theirs.decode_rate:9.0f}"
            f" {ours.decode_rate / theirs.decode_rate:5.2f}"
            f" {ours.total_s:12.2f} {theirs.total_s:9.2f} {theirs.total_s / ours.total_s:5.2f}"
            f" {same:>3}/{rows:<2}"
        )
    print("  prompt: mean tokens per row; same: rows whose answers agree up to their end of turn")

    # The decode limit at batch 32 (or the largest plain batch run).
    batch = max(batches)
    ours, theirs = results[f"plain, batch {batch}"]
    context = ours.prompt_tokens / batch + new / 2
    per_token = flops_per_token(eng.base, context)
    limit = decode_rate / per_token
    weights = linear_weights(eng.base) * eng.base.dtype.itemsize
    memory_limit = batch * max(sum_bw, copy_bw / 2) / weights  # a step reads them once
    print()
    print(f"Decode limit at batch {batch} (mean context {context:.0f} tokens)")
    print(
        f"  FLOPs per token: {per_token / 1e6:.0f} M (2 x {linear_weights(eng.base) / 1e6:.1f} M"
        f" weights + attention {(per_token - 2 * linear_weights(eng.base)) / 1e6:.1f} M)"
    )
    print(
        f"  FLOP limit: {limit:.0f} tok/s at {decode_rate / 1e9:.1f} GFLOP/s (decode shapes);"
        f" {peak / per_token:.0f} tok/s at the peak {peak / 1e9:.1f} GFLOP/s"
    )
    print(
        f"  weight reads: {weights / 2**20:.0f} MiB a step -> {memory_limit:.0f} tok/s"
        f" at the measured read rate (the bound when they do not stay in cache)"
    )
    step_limit = step_rate / per_token
    print(
        f"  the model's own products alone, in order on its weights ({batch} rows):"
        f" {step_rate / 1e9:.1f} GFLOP/s -> {step_limit:.0f} tok/s"
        f" = {step_limit / limit:.2f} of the FLOP limit (a step cannot beat this);"
        f" ours = {ours.decode_rate / step_limit:.2f} of it, generate"
        f" {theirs.decode_rate / step_limit:.2f}"
    )
    print(
        f"  ours {ours.decode_rate:.0f} tok/s = {ours.decode_rate / limit:.2f} of the FLOP limit"
        f" ({limit / ours.decode_rate:.2f}x from it; target within 2x);"
        f" generate {theirs.decode_rate:.0f} tok/s = {theirs.decode_rate / limit:.2f};"
        f" ours / generate {ours.decode_rate / theirs.decode_rate:.2f}"
    )
    wall, parts = step_profile(eng, batch)
    print(
        f"  a decoding step of {batch} rows: {wall * 1e3:.1f} ms (the FLOP limit's"
        f" {batch / limit * 1e3:.1f} ms; within 2x: {2 * batch / limit * 1e3:.1f} ms);"
        " under torch's profiler, a step's "
        + ", ".join(f"{name} {seconds * 1e3:.1f} ms" for name, seconds in parts.items())
    )
    if args.formats:
        print(f"  the model's products for {batch} rows with other weight formats:")
        for name, seconds, size, same in product_formats(eng.base, batch, budget):
            print(
                f"    {name:<46} {seconds * 1e3:6.1f} ms  {size:4.2f}x the fp32 weights' bytes;"
                f" first product {same}"
            )
    job = [r for name, r in results.items() if not name.startswith("plain")]
    job_speedup = sum(t.total_s for _, t in job) / sum(o.total_s for o, _ in job)
    plain_worst = min(
        t.total_s / o.total_s for name, (o, t) in results.items() if name.startswith("plain")
    )
    print(
        f"  main job's workload: ours {job_speedup:.2f}x generate's throughput (target >= 3x);"
        f" plain batches: at worst {plain_worst:.2f}x (target >= 1x)"
    )
    print(
        f"  load average {os.getloadavg()[0]:.2f} (1 min; other work on this machine skews figures)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
