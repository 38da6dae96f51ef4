"""LoRA fine-tuning throughput of the embedded server, in trained tokens per second.

Uploads a synthetic date-normalisation file, runs one fine-tuning job on the default model
(SmolLM2-135M-Instruct) in a child server process, and prints tokens/s over the training
steps (model loading and checkpoint saving excluded), the job's wall time, the loss at the
first and last steps, and the server's peak RSS.

    python benchmarks/bench_lora_training.py [--examples 64] [--epochs 1] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_local_batching import DEFAULT_MODEL, server_process

SYSTEM = "Rewrite the date the user gives as YYYY-MM-DD. Answer with the date only."
FORMATS = ["%B %d, %Y", "%d %b %Y", "%m/%d/%Y", "%A, %d %B %Y", "%d.%m.%Y"]


def training_file(n: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        day = dt.date(1990, 1, 1) + dt.timedelta(days=rng.randrange(15000))
        spoken = day.strftime(rng.choice(FORMATS))
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"When is it? {spoken}"},
            {"role": "assistant", "content": day.isoformat()},
        ]
        lines.append(json.dumps({"messages": messages}))
    return ("\n".join(lines) + "\n").encode()


def follow(client: openai.OpenAI, job_id: str) -> Any:
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        time.sleep(1)
    return job


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data, server_process(Path(data)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="local", timeout=600)
        upload = io.BytesIO(training_file(args.examples))
        file = client.files.create(file=("dates.jsonl", upload), purpose="fine-tune")
        hyper = {"n_epochs": args.epochs, "batch_size": args.batch_size}
        began = time.perf_counter()
        job = client.fine_tuning.jobs.create(
            model=DEFAULT_MODEL,
            training_file=file.id,
            method={"type": "supervised", "supervised": {"hyperparameters": hyper}},
        )
        job = follow(client, job.id)
        wall = time.perf_counter() - began
        events = client.fine_tuning.jobs.list_events(job.id, limit=10000).data
        steps = [e.data for e in reversed(events) if e.type == "metrics" and e.data]
        if job.status != "succeeded" or not steps:
            raise SystemExit(f"job {job.status}: {job.error}")
        last = steps[-1]
        rate = last["trained_tokens"] / last["step_seconds"]
        print(f"examples     {args.examples} x {args.epochs} epoch(s), batch {args.batch_size}")
        print(f"steps        {last['step']}  ({last['trained_tokens']} tokens)")
        print(f"throughput   {rate:7.1f} tokens/s over the training steps")
        print(f"step time    {last['step_seconds'] / last['step']:7.2f} s per step")
        print(f"job wall     {wall:7.1f} s  (incl. model load, checkpoints, adapter save)")
        print(f"loss         {steps[0]['train_loss']:.3f} -> {last['train_loss']:.3f}")
        print(f"peak RSS     {server.peak_rss_mib():7.0f} MiB  (server process)")
        print(
            f"load avg     {os.getloadavg()[1]:7.2f}  (5 min; other work on this machine skews it)"
        )
        client.close()


if __name__ == "__main__":
    main()
