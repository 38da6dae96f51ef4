"""Batched decoding and LoRA training on whatever device is present: tokens/s and peak memory.

Loads the default model (SmolLM2-135M-Instruct) the way the embedded server does, on the
device ``--device`` picks (``auto``: CUDA in bfloat16/float16 when torch sees a GPU, else the
CPU in float32), then:

- decodes ``--batch`` date-normalisation requests together, greedily, ``--max-tokens`` each,
  and prints generated tokens per second;
- trains one LoRA epoch on ``--examples`` examples (batch 8) and prints trained tokens per
  second over the training steps (loading and saving excluded);
- prints the peak memory: the GPU's allocator peak on CUDA, the process's peak RSS on the CPU.

    python benchmarks/bench_device.py [--device auto] [--batch 32] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lora_training import SYSTEM, training_file

from distill_server.devices import DEVICE_CHOICES, choose
from distill_server.engine.decode import Engine, GenRequest
from distill_server.models import ModelSource, base_sources
from distill_server.trainer.lora import Callbacks, Hyperparameters, train_lora
from distill_shapes.training import parse_training_file


def decode(source: ModelSource, batch: int, max_tokens: int) -> tuple[float, int]:
    engine = Engine(source)
    requests = [
        GenRequest(
            messages=(
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"When is it? March {1 + n % 28}, {1990 + n}"},
            ),
            max_tokens=max_tokens,
            temperature=0.0,
            top_p=1.0,
            seed=None,
            stop=(),
        )
        for n in range(batch)
    ]
    engine.generate(None, requests[:2])  # warm-up: first-call allocations and kernels
    _sync(source)
    began = time.perf_counter()
    results = engine.generate(None, requests)
    _sync(source)
    seconds = time.perf_counter() - began
    tokens = sum(r.completion_tokens for r in results if not isinstance(r, Exception))
    del engine
    return tokens / seconds, tokens


def train(source: ModelSource, examples: int, out: Path) -> tuple[float, int]:
    data = parse_training_file(training_file(examples))
    hp = Hyperparameters(n_epochs=1, batch_size=8, learning_rate_multiplier=1.0, seed=0)
    seen: list[tuple[int, float]] = []
    callbacks = Callbacks(
        on_step=lambda m: seen.append((m.trained_tokens, m.step_seconds)),
        on_checkpoint=lambda c: None,
        stop=lambda: False,
    )
    train_lora(source, data, [], hp, out, callbacks)
    tokens, seconds = seen[-1]
    return tokens / seconds, tokens


def _sync(source: ModelSource) -> None:
    if choose(source.device).device == "cuda":
        torch.cuda.synchronize()


def _peak(device: str) -> str:
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 1024**2
        return f"{peak:.0f} MiB allocated on {torch.cuda.get_device_name()}"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return f"{rss:.0f} MiB peak RSS of this process"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--examples", type=int, default=64)
    args = parser.parse_args()
    placement = choose(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        [source] = base_sources(None, args.device).values()
        source = replace(source, cache=Path(tmp) / "converted")
        print(f"device: {placement}, torch {torch.__version__}, {torch.get_num_threads()} threads")
        rate, tokens = decode(source, args.batch, args.max_tokens)
        print(
            f"batched decoding: {args.batch} requests, {tokens} tokens, {rate:.1f} tokens/s "
            f"({_peak(placement.device)})"
        )
        rate, tokens = train(source, args.examples, Path(tmp) / "adapter")
        print(f"LoRA training: {tokens} tokens, {rate:.1f} tokens/s ({_peak(placement.device)})")


if __name__ == "__main__":
    main()
