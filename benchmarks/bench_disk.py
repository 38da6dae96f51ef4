"""Disk a fine-tuning server keeps: its data directory after five 3-epoch jobs, and after
deleting four of their models.

Runs an in-process server on a fresh data directory, on the tiny test model by default (the
figures are small) or on SmolLM2-135M-Instruct with ``--smollm2`` (the default model: about
18 MB per adapter, 39 MB of optimizer state per checkpoint).

    python benchmarks/bench_disk.py [--smollm2] [--jobs 5] [--epochs 3] [--keep-checkpoints 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import openai
from distill_server.tiny import create_tiny_model

from distill_server import LocalServer


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def training_file(n: int = 24) -> bytes:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Which code goes with item {i}?"},
                {"role": "assistant", "content": f"CODE-{i % 7}"},
            ]
        }
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--smollm2", action="store_true", help="train the default SmolLM2 model")
    p.add_argument("--jobs", type=int, default=5)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--keep-checkpoints", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = None if args.smollm2 else {"tiny": create_tiny_model(root / "model")}
        model = "SmolLM2-135M-Instruct" if args.smollm2 else "tiny"
        data = root / "data"
        with (
            LocalServer(data, models=models, keep_checkpoints=args.keep_checkpoints) as srv,
            openai.OpenAI(base_url=srv.base_url, api_key="local", max_retries=0) as client,
        ):
            file_id = client.files.create(file=("t.jsonl", training_file()), purpose="fine-tune")
            hyper = {"n_epochs": args.epochs, "batch_size": 8}
            made = []
            for _ in range(args.jobs):
                job = client.fine_tuning.jobs.create(
                    model=model,
                    training_file=file_id.id,
                    method={"type": "supervised", "supervised": {"hyperparameters": hyper}},
                )
                while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in {
                    "succeeded",
                    "failed",
                    "cancelled",
                }:
                    time.sleep(0.5)
                assert job.status == "succeeded", job.error
                made.append(job.fine_tuned_model)
            after_jobs = size(data / "adapters")
            for model_id in made[:-1]:
                client.models.delete(model_id)
            after_delete = size(data / "adapters")
        print(f"adapters after {args.jobs} jobs: {after_jobs:,} bytes")
        print(f"adapters after deleting {args.jobs - 1} models: {after_delete:,} bytes")


if __name__ == "__main__":
    main()
