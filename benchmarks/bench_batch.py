"""The same chat requests run live (64 in flight) and as one batch, on the embedded server.

Starts the embedded server in this process on the default model (SmolLM2-135M-Instruct,
converted once under ``--data-dir``; or the tiny test model with ``--tiny``), warms it up
with one request, then runs ``--cases`` greedy chat requests twice:

- live: ``POST /v1/chat/completions`` from 64 client threads (``--in-flight``), as the
  plugin's prefetch does;
- batch: the same bodies as one input file: upload (``purpose=batch``), ``POST /v1/batches``,
  polled until completed, the output file downloaded.

It prints each way's wall time and requests per second, the batch's time over the live
calls', how many batch answers equal the live ones (greedy, so all should), and the cost
column the summary would print for each way at OpenAI's prices (``--price``, a
``distill_prices`` line, read and applied by the plugin's own code: the batch's calls at the
``batch`` factor, 0.5 unless ``--price`` gives a ``batch = FACTOR`` line too).

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
from pytest_distill.options.values import prices
from pytest_distill.records import ItemResult
from pytest_distill.roles import CallRecord
from pytest_distill.verdict.results import aggregate

REPO = Path(__file__).resolve().parents[1]
TOPICS = ["cats", "rain", "bread", "trains", "maps", "tea", "snow", "bees", "rivers", "copper"]
OPENAI_PRICE = "gpt-4.1-mini = 0.40 1.60"
"""OpenAI's list price of gpt-4.1-mini, USD per million prompt and completion tokens."""
Usage = dict[str, tuple[int, int]]  # custom_id: (prompt tokens, completion tokens)


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
) -> tuple[float, dict[str, str], Usage]:
    def ask(item: tuple[str, dict[str, Any]]) -> tuple[str, str, tuple[int, int]]:
        answer = client.chat.completions.create(**item[1])
        usage = answer.usage
        tokens = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
        return item[0], answer.choices[0].message.content or "", tokens

    began = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        done = list(pool.map(ask, requests.items()))
    seconds = time.perf_counter() - began
    return seconds, {cid: text for cid, text, _ in done}, {cid: t for cid, _, t in done}


def run_batch(
    client: openai.OpenAI, requests: dict[str, dict[str, Any]]
) -> tuple[float, dict[str, str], Usage, str]:
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
    results = list(read_results(lines))
    answers = {
        r.custom_id: (r.body or {})["choices"][0]["message"]["content"] or "" for r in results
    }
    usage = {r.custom_id: (r.body or {}).get("usage") or {} for r in results}
    tokens = {
        cid: (int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
        for cid, u in usage.items()
    }
    return seconds, answers, tokens, batch.id


def summary_cost(usage: Usage, price_lines: list[str], batch_id: str | None) -> str:
    """The cost column the summary prints for these calls, priced as the plugin prices them
    (``distill_prices`` lines; a call answered by a batch at the table's batch factor)."""
    table = prices(price_lines)
    model = next(iter(table))
    items = [
        ItemResult(
            nodeid=cid,
            suite="bench",
            case_id=cid,
            role="teacher",
            split="train",
            passed=True,
            score=1.0,
            call=CallRecord(
                role="teacher",
                model=model,
                messages=(),
                params={},
                reply="",
                completion_id=None,
                prompt_tokens=prompt,
                completion_tokens=completion,
                latency_s=0.0,
                batch_id=batch_id,
                custom_id=cid if batch_id else None,
            ),
        )
        for cid, (prompt, completion) in usage.items()
    ]
    cost = aggregate(items, table).cost
    return f"${cost:.4f}" if cost is not None else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--tiny", action="store_true", help="the tiny test model, not SmolLM2")
    parser.add_argument(
        "--price",
        action="append",
        help="a distill_prices line to price the calls at, repeatable (default: "
        f"{OPENAI_PRICE!r}; the first model line prices every call)",
    )
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
        live_s, live, live_usage = run_live(client, requests, args.in_flight)
        batch_s, batched, batch_usage, batch_id = run_batch(client, requests)
    equal = sum(batched.get(cid) == text for cid, text in live.items())
    n = args.cases
    price_lines = args.price or [OPENAI_PRICE]
    live_cost = summary_cost(live_usage, price_lines, None)
    batch_cost = summary_cost(batch_usage, price_lines, batch_id)
    print(f"\n{n} requests, greedy, at most {args.max_tokens} tokens each, on {model}")
    print(f"priced as the summary prices them, at {'; '.join(price_lines)}")
    print(
        f"live, {args.in_flight} in flight: {live_s:8.2f} s  {n / live_s:7.2f} requests/s  "
        f"cost {live_cost}"
    )
    print(
        f"one batch:            {batch_s:8.2f} s  {n / batch_s:7.2f} requests/s  cost {batch_cost}"
    )
    print(f"batch time / live time: {batch_s / live_s:.2f}")
    print(f"batch answers equal to the live ones: {equal}/{n}")
    return 0 if equal == n else 1


if __name__ == "__main__":
    sys.exit(main())
