"""README command 1's main job, measured: wall time, tokens per second and peak memory by phase.

Copies ``example_project/`` to a temporary folder (a fresh ``.distill/``, so the GGUF model is
converted as on a first run) and runs ``pytest --distill --distill-record-mode=off`` there:
the live distillation on the embedded server, as command 1 does after its set-up. Then it
replays the project's recording offline. It prints, by phase:

- wall seconds;
- peak resident memory of every process of the job together (the pytest process, the
  embedded server's process where it has its own, the model's one-off conversion), and of
  the largest one, sampled every 0.2 s with psutil;
- prompt and completion tokens per second of the model calls answered in the phase (from
  the run's JSON report), and LoRA's trained tokens per second of training steps.

The phases: start-up and collection; the model's conversion and load (until the first
answer's model is ready); the teacher and student calls; the distill step (training set,
upload, LoRA, the fine-tuned model's load); the fine-tuned student's calls; the report.

    python benchmarks/bench_main_job.py              # the example, live, then its replay
    python benchmarks/bench_main_job.py --cases 64   # the first 64 cases of each suite
    python benchmarks/bench_main_job.py --replay-only
    python benchmarks/bench_main_job.py --baseline ../old   # that checkout's job first, then ours

The same file is the pytest plugin (``-p bench_main_job``) that timestamps each item.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

EVENTS_ENV = "BENCH_MAIN_JOB_EVENTS"
COUNTS_ENV = "DISTILL_ENGINE_COUNTS"  # the embedded server's engine logs its token counts
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "example_project"
ROLES = ("teacher", "student", "finetuned")


# --- the plugin, in the job's pytest process ----------------------------------------------------


def _event(kind: str, **data: Any) -> None:
    path = os.environ.get(EVENTS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"t": time.time(), "kind": kind, **data}) + "\n")


def pytest_collection_finish(session: Any) -> None:
    _event("collected", items=len(session.items))


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    _event("start", role=_role(nodeid))


def pytest_runtest_logfinish(nodeid: str, location: Any) -> None:
    _event("finish", role=_role(nodeid))


def pytest_unconfigure(config: Any) -> None:
    _event("unconfigure")


def _role(nodeid: str) -> str | None:
    for role in ROLES:
        if nodeid.endswith(f"[{role}]") or f"[{role}-" in nodeid or f"-{role}]" in nodeid:
            return role
    return None


# --- the benchmark ------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    total: int
    by_process: dict[str, int]


@dataclass
class Sampler:
    """Resident memory of a process and its descendants, every ``every`` seconds."""

    pid: int
    every: float = 0.2
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        root = psutil.Process(self.pid)
        while not self._stop.is_set():
            try:
                processes = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            by_process: dict[str, int] = {}
            for process in processes:
                try:
                    name = _name(process)
                    by_process[name] = by_process.get(name, 0) + process.memory_info().rss
                except psutil.Error:
                    continue
            self.samples.append(Sample(time.time(), sum(by_process.values()), by_process))
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()


def _name(process: psutil.Process) -> str:
    command = " ".join(process.cmdline())
    if "distill_server" in command or "distill-server" in command:
        return "server"
    if "convert" in command or "gguf" in command:
        return "conversion"
    if "pytest" in command:
        return "pytest"
    return process.name()


@dataclass
class Phase:
    name: str
    begin: float
    end: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    note: str = ""


def run_job(
    project: Path, args: list[str], events: Path, source: Path | None = None
) -> tuple[int, float, float, Sampler, str]:
    """Runs pytest in ``project``; ``source``: a checkout whose packages it imports instead."""
    env = {**os.environ, EVENTS_ENV: str(events), COUNTS_ENV: "1"}
    paths = [str(ROOT / "benchmarks"), str(source) if source else "", env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    command = [sys.executable, "-m", "pytest", "-p", "bench_main_job", "-p", "no:cacheprovider"]
    began = time.time()
    proc = subprocess.Popen(
        [*command, *args],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sampler = Sampler(proc.pid)
    thread = threading.Thread(target=sampler.run, daemon=True)
    thread.start()
    output, _ = proc.communicate()
    ended = time.time()
    sampler.stop()
    thread.join()
    return proc.returncode, began, ended, sampler, output


def converted_at(data_dir: Path, began: float, done: threading.Event) -> list[float]:
    """Polls until the embedded server has converted its model; the time it saw it, in a list."""
    from distill_server.models import pending_conversions

    seen: list[float] = []

    def poll() -> None:
        while not done.is_set():
            if (data_dir / "converted").exists() and not pending_conversions(data_dir, None):
                seen.append(time.time())
                return
            time.sleep(0.2)

    threading.Thread(target=poll, daemon=True).start()
    return seen


def phases(
    events: list[dict[str, Any]], began: float, ended: float, converted: float | None
) -> list[Phase]:
    collected = next((e["t"] for e in events if e["kind"] == "collected"), began)
    starts = [e for e in events if e["kind"] == "start"]
    finishes = [e for e in events if e["kind"] == "finish"]
    first_item = starts[0]["t"] if starts else collected
    calls = [e["t"] for e in finishes if e["role"] in ("teacher", "student")]
    calls_end = max(calls, default=first_item)
    tuned_starts = [e["t"] for e in starts if e["role"] == "finetuned"]
    tuned_ends = [e["t"] for e in finishes if e["role"] == "finetuned"]
    tuned_begin = min(tuned_starts, default=calls_end)
    tuned_end = max(tuned_ends, default=tuned_begin)
    load_end = converted if converted is not None and converted < calls_end else first_item
    return [
        Phase("start-up, collection", began, first_item),
        Phase("conversion, model load", first_item, max(load_end, first_item)),
        Phase("teacher + student calls", max(load_end, first_item), calls_end),
        Phase("distill step (LoRA)", calls_end, tuned_begin),
        Phase("fine-tuned calls", tuned_begin, tuned_end),
        Phase("report, exit", tuned_end, ended),
    ]


def print_job(
    title: str,
    result: tuple[int, float, float, Sampler, str],
    events: Path,
    report: Path,
    converted: float | None,
) -> None:
    code, began, ended, sampler, output = result
    recorded = (
        [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []
    )
    data = json.loads(report.read_text()) if report.exists() else {}
    parts = phases(recorded, began, ended, converted)
    items = data.get("items", [])
    calls = {"teacher": parts[2], "student": parts[2], "finetuned": parts[4]}
    for item in items:
        phase = calls.get(item.get("role", ""))
        if phase is not None:
            phase.prompt_tokens += item.get("prompt_tokens") or 0
            phase.completion_tokens += item.get("completion_tokens") or 0
    training = data.get("training") or {}
    metrics = training.get("metrics") or []
    if metrics:
        last = metrics[-1]
        seconds, tokens = last.get("step_seconds") or 0, last.get("trained_tokens") or 0
        rate = tokens / seconds if seconds else 0.0
        parts[3].note = (
            f"LoRA {last.get('step')} steps, {tokens} tokens in {seconds:.0f} s of steps: "
            f"{rate:.0f} tok/s"
        )
    print(f"\n{title}: exit code {code}, {len(items)} items, {ended - began:.0f} s")
    print(
        f"{'phase':26} {'wall s':>7} {'peak GB':>8} {'largest':>18} "
        f"{'prompt tok/s':>13} {'compl tok/s':>12}"
    )
    for phase in parts:
        seconds = phase.end - phase.begin
        inside = [s for s in sampler.samples if phase.begin <= s.t <= phase.end]
        peak = max(inside, key=lambda s: s.total, default=None)
        largest = ""
        if peak is not None:
            name, rss = max(peak.by_process.items(), key=lambda kv: kv[1])
            largest = f"{rss / 2**30:.2f} ({name})"
        total = f"{peak.total / 2**30:.2f}" if peak is not None else "-"
        prompt = f"{phase.prompt_tokens / seconds:.0f}" if phase.prompt_tokens and seconds else ""
        done = (
            f"{phase.completion_tokens / seconds:.0f}"
            if phase.completion_tokens and seconds
            else ""
        )
        print(f"{phase.name:26} {seconds:7.1f} {total:>8} {largest:>18} {prompt:>13} {done:>12}")
        if phase.note:
            print(f"{'':26} {phase.note}")
    overall = max(sampler.samples, key=lambda s: s.total, default=None)
    if overall is not None:
        each = ", ".join(f"{k} {v / 2**30:.2f}" for k, v in overall.by_process.items())
        print(f"peak of the whole job: {overall.total / 2**30:.2f} GB ({each})")
    gate = (data.get("gate") or {}).get("passed")
    scores = data.get("scores") or {}
    print(f"gate passed: {gate}; holdout scores: {json.dumps(scores)[:300]}")
    if code not in (0,):
        print(output[-3000:])


def print_counts(log: Path) -> None:
    """The engine's prompt tokens by how they ran, at each time it went idle (cumulative)."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    for line in lines:
        if not line.startswith("engine counts: "):
            continue
        counts = ast.literal_eval(line.removeprefix("engine counts: "))
        prompt = counts.get("prompt", 0) or 1
        share = {k: counts.get(k, 0) / prompt for k in ("cached", "shared", "run")}
        print(
            f"engine: {counts.get('prompts', 0)} prompts in {counts.get('groups', 0)} groups, "
            f"{counts.get('prompt', 0)} prompt tokens: {share['cached']:.0%} from cached "
            f"prefixes, {share['shared']:.0%} shared in a group, {share['run']:.0%} run "
            f"(padding included); {counts.get('steps', 0)} decoding steps of "
            f"{counts.get('decoded', 0) / max(counts.get('steps', 0), 1):.1f} rows"
        )


def project_copy(where: Path, cases: int | None) -> Path:
    project = where / "example_project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns(".distill", "__pycache__"))
    if cases is not None:
        for path in (project / "evals").glob("*.cases.jsonl"):
            lines = path.read_text().splitlines(keepends=True)[:cases]
            path.write_text("".join(lines))
    return project


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=None, help="the first N cases of each suite")
    parser.add_argument("--replay-only", action="store_true")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of another release (git worktree): its live job runs first, with the "
        "same interpreter and packages, importing its pytest_distill and server instead",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-main-job-") as tmp:
        where = Path(tmp)
        runs = [("baseline", args.baseline.resolve())] if args.baseline else []
        runs.append(("this checkout", None))
        for name, source in [] if args.replay_only else runs:
            project = project_copy(where / name, args.cases)
            events, report = where / f"{name}-events.jsonl", where / f"{name}-report.json"
            done = threading.Event()
            seen = converted_at(project / ".distill" / "server", time.time(), done)
            result = run_job(
                project,
                ["--distill", "--distill-record-mode=off", f"--distill-report={report}", "-q"],
                events,
                source,
            )
            done.set()
            title = f"main job, live, {name}" + (f" ({source})" if source else "")
            print_job(title, result, events, report, seen[0] if seen else None)
            print_counts(project / ".distill" / "server" / "server.log")
        project = project_copy(where / "replay", None)
        events, report = where / "replay-events.jsonl", where / "replay-report.json"
        result = run_job(
            project,
            ["--distill", "--distill-record-mode=none", f"--distill-report={report}", "-q"],
            events,
        )
        print_job("main job, replayed from the cassettes", result, events, report, None)


if __name__ == "__main__":
    main()
