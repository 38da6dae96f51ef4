"""Throughput of 32 concurrent short chat requests against the same 32 sent one at a time.

Runs the embedded server (default model SmolLM2-135M-Instruct) in a child process and prints
wall time, requests/s and generated tokens/s for both, the speed-up, and the server's peak RSS.

    python benchmarks/bench_local_batching.py [--requests 32] [--max-tokens 32] [--model ID=PATH]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import openai

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "SmolLM2-135M-Instruct"
TOPICS = ["cats", "rain", "bread", "trains", "maps", "tea", "snow", "bees"]


@dataclass(frozen=True, slots=True)
class ServerProcess:
    base_url: str
    pid: int

    def peak_rss_mib(self) -> float:
        """Peak resident memory of the server process (Linux ``VmHWM``); NaN elsewhere."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return float("nan")
        line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024


@contextmanager
def server_process(data_dir: Path, models: Sequence[str] = ()) -> Iterator[ServerProcess]:
    """``python -m distill_server`` on a free port in a child; SIGINT on exit.

    A child process, so the memory figure is the server's alone, not the client's.
    """
    command = [sys.executable, "-m", "distill_server", "--port", "0"]
    command += ["--data-dir", str(data_dir)]
    for model in models:
        command += ["--model", model]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "serving on " not in line:
            raise RuntimeError(f"distill-server did not start: {line!r}")
        yield ServerProcess(line.split("serving on ")[1].split()[0], proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def prompts(n: int) -> list[str]:
    return [f"In one short sentence, say something true about {TOPICS[i % 8]}." for i in range(n)]


def ask(client: openai.OpenAI, model: str, prompt: str, max_tokens: int) -> int:
    result = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=max_tokens,
    )
    return result.usage.completion_tokens if result.usage else 0


def timed(label: str, run: Callable[[], int], n: int) -> float:
    began = time.perf_counter()
    tokens = run()
    seconds = time.perf_counter() - began
    rates = f"{n / seconds:6.2f} req/s  {tokens / seconds:7.1f} tok/s"
    print(f"{label:<12} {seconds:7.2f} s  {rates}  ({tokens} tokens)")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--model", help="ID=PATH of another model (default: SmolLM2)")
    args = parser.parse_args()
    model = args.model.partition("=")[0] if args.model else DEFAULT_MODEL
    texts = prompts(args.requests)
    models = [args.model] if args.model else []
    with tempfile.TemporaryDirectory() as data, server_process(Path(data), models) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="local", timeout=600)
        began = time.perf_counter()
        ask(client, model, "Hello", 4)  # loads the model, outside both timings
        print(f"model load   {time.perf_counter() - began:7.2f} s  ({model})")

        def one_by_one() -> int:
            return sum(ask(client, model, p, args.max_tokens) for p in texts)

        def concurrent() -> int:
            with ThreadPoolExecutor(len(texts)) as pool:
                return sum(pool.map(lambda p: ask(client, model, p, args.max_tokens), texts))

        alone = timed("one by one", one_by_one, len(texts))
        together = timed("concurrent", concurrent, len(texts))
        print(f"speed-up     {alone / together:7.2f} x  (target >= 4x)")
        print(f"peak RSS     {server.peak_rss_mib():7.0f} MiB  (server process)")
        print(
            f"load avg     {os.getloadavg()[1]:7.2f}  (5 min; other work on this machine skews it)"
        )
        client.close()


if __name__ == "__main__":
    main()
