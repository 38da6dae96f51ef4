"""The same chat requests run live (64 in flight) and as one batch, on the embedded server.

Starts the embedded server in this process on the default model (SmolLM2-135M-Instruct,
converted once under ``--data-dir``; or the tiny test model with ``--tiny``), warms it up
with one request, then runs ``--cases`` greedy chat requests twice:

- live: ``POST /v1/chat/completions`` from 64 client threads (``--in-flight``), as the
  plugin's prefetch does;
- batch: the same bodies as one input file: upload (``purpose=batch``), ``POST /v1/batches``,
  polled until completed, the output file downloaded.

It prints each way's wall time and requests per second, the batch's time over the live
calls', and how many batch answers equal the live ones (greedy, so all should).

    python benchmarks/bench_batch.py [--cases 1000] [--max-tokens 32] [--tiny]

One run of each: the machine may be busy with other work, so compare the two figures of a
run, not figures across runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai

from distill_server import LocalServer
from distill_shapes.batch import BatchRequest, read_results, write_requests

REPO = Path(__file__).resolve().parents[1]
TOPICS = ["cats", "rain", "bread", "trains", "maps", "tea", "snow", "bees", "rivers", "copper"]


def bodies(model: str, cases: int, max_tokens: int) -> dict[str, dict[str, Any]]:
    """Greedy chat bodies, each prompt its own (a topic and a number)."""
    return {
        f"case-{i:05d}": {
            "model": model,
            "messages": [
                {"role": "system", "content": "Answer in one short sentence."},
                {
                    "role": "user",
                    "content": f"Say something true about {TOPICS[i % 10]} (note {i}).",
                },
            ],
            "temperature": 0,
            "max_tokens": max_tokens,
        }
        for i in range(cases)
    }


def run_live(
    client: openai.OpenAI, requests: dict[str, dict[str, Any]], in_flight: int
) -> tuple[float, dict[str, str]]:
    def ask(item: tuple[str, dict[str, Any]]) -> tuple[str, str]:
        answer = client.chat.completions.create(**item[1])
        return item[0], answer.choices[0].message.content or ""

    began = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        answers = dict(pool.map(ask, requests.items()))
    return time.perf_counter() - began, answers


def run_batch(
    client: openai.OpenAI, requests: dict[str, dict[str, Any]]
) -> tuple[float, dict[str, str]]:
    data = write_requests(BatchRequest(cid, body) for cid, body in requests.items())
    began = time.perf_counter()
    file = client.files.create(file=("bench.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        time.sleep(0.1)
        batch = client.batches.retrieve(batch.id)
    if batch.status != "completed" or not batch.output_file_id:
        sys.exit(f"the batch ended {batch.status}: {batch.errors} (errors: {batch.error_file_id})")
    lines = client.files.content(batch.output_file_id).content.splitlines()
    seconds = time.perf_counter() - began
    answers = {
        r.custom_id: (r.body or {})["choices"][0]["message"]["content"] or ""
        for r in read_results(lines)
    }
    return seconds, answers


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--tiny", action="store_true", help="the tiny test model, not SmolLM2")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=REPO / ".distill" / "bench-batch",
        help="the server's data directory, where the converted model is kept "
        "(default: %(default)s)",
    )
    args = parser.parse_args()

    models: dict[str, Path] | None = None
    model = "SmolLM2-135M-Instruct"
    if args.tiny:
        sys.path.insert(0, str(REPO / "tests"))
        from tiny_model import create_tiny_model

        models = {"tiny": create_tiny_model(Path(tempfile.mkdtemp(prefix="tiny-model-")))}
        model = "tiny"
    requests = bodies(model, args.cases, args.max_tokens)
    began = time.perf_counter()
    with (
        LocalServer(args.data_dir, models=models) as server,
        openai.OpenAI(base_url=server.base_url, api_key="local", max_retries=0) as client,
    ):
        warm = {"warm-up": {**requests["case-00000"], "max_tokens": 4}}
        run_live(client, warm, 1)
        print(f"model {model} ready in {time.perf_counter() - began:.1f} s", flush=True)
        live_s, live = run_live(client, requests, args.in_flight)
        batch_s, batched = run_batch(client, requests)
    equal = sum(batched.get(cid) == text for cid, text in live.items())
    n = args.cases
    print(f"\n{n} requests, greedy, at most {args.max_tokens} tokens each, on {model}")
    print(f"live, {args.in_flight} in flight: {live_s:8.2f} s  {n / live_s:7.2f} requests/s")
    print(f"one batch:            {batch_s:8.2f} s  {n / batch_s:7.2f} requests/s")
    print(f"batch time / live time: {batch_s / live_s:.2f}")
    print(f"batch answers equal to the live ones: {equal}/{n}")
    return 0 if equal == n else 1


if __name__ == "__main__":
    sys.exit(main())
