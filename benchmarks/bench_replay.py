"""Replay time: the example project's offline replay under the real ``pytest`` command, and
pytest-distill's cassettes next to vcrpy's own as the number of items grows.

``example``: a copy of ``example_project/`` in a temporary directory, run by this environment's
``pytest`` in subprocesses: its start-up and collection (``--collect-only``), its full replay
(``--distill --distill-record-mode=none``, whose gate must pass), and what the replay costs per
100 items beyond start-up; next to it, as the reference, pytest's own cost per 100 trivial tests
beyond its start-up; and what of the replay is the import of openai and scipy.special (the SDK,
and the gate's statistics), paid once a session. Each figure is the least of ``--repeat``
rounds (the runs interleaved, so that every figure sees the same load), after one untimed
round that fills a byte-code cache of the benchmark's own (``PYTHONPYCACHEPREFIX``), as Python
keeps one on a laptop. Wall and CPU seconds: on a busy machine the CPU time moves less.

``cassettes``: each item is one chat completion (a distinct prompt), replayed through the OpenAI
SDK over httpx2 with nothing listening. pytest-distill keeps one JSON cassette per item and
finds a request through a dict index; vcrpy, given one cassette with every interaction and body
matching, compares each request with the recorded ones in turn (quadratic overall).

    python benchmarks/bench_replay.py [--only example|cassettes] [--repeat 3]
        [--environment-bytecode]
        [--items 100 200 400 800] [--vcrpy-up-to 400]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import vcr

from pytest_distill.cassettes import files as cassettes
from pytest_distill.cassettes import recorder as recording

BASE = "http://local.invalid/v1"
EXAMPLE = Path(__file__).resolve().parent.parent / "example_project"
PYTEST = str(Path(sys.executable).with_name("pytest"))  # this environment's pytest command
QUIET = ["-q", "-p", "no:cacheprovider"]
REPLAY = ["--distill", "--distill-record-mode=none"]
OUTCOMES = re.compile(r"(\d+) (?:passed|failed|below passing|skipped|xfailed|xpassed|errors?)\b")


def bytecode_cache(tmp: Path) -> dict[str, str]:
    """The environment of the timed runs: byte code (and pytest's rewritten test modules)
    cached in a folder of the benchmark's own, as on a laptop where Python writes it, even
    where PYTHONDONTWRITEBYTECODE is set; nothing is written into the source tree."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    return env


@dataclass(frozen=True)
class Timing:
    wall: float  # seconds on the clock
    cpu: float  # seconds of CPU, user and system: less moved by other work on the machine

    def __sub__(self, other: Timing) -> Timing:
        return Timing(self.wall - other.wall, self.cpu - other.cpu)

    def per_100(self, items: int) -> Timing:
        return Timing(100 * self.wall / items, 100 * self.cpu / items)


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[Timing, str, int]:
    """One process: its wall and CPU time, its output and its exit code."""
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return Timing(wall, cpu), done.stdout + done.stderr, done.returncode


def items_run(output: str) -> int:
    """The items of pytest's summary line (``405 passed, 195 below passing in 3.58s``)."""
    summary = [line for line in output.splitlines() if OUTCOMES.search(line)][-1]
    return sum(int(n) for n in OUTCOMES.findall(summary))


def example_replay(repeat: int, cache: bool = True) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "example_project"
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns(".distill", "__pycache__"))
        trivial = Path(tmp) / "trivial"
        trivial.mkdir()
        (trivial / "pytest.ini").write_text("[pytest]\n")
        env = bytecode_cache(Path(tmp)) if cache else dict(os.environ)
        _, output, _ = timed([PYTEST, *QUIET, *REPLAY], project, env)
        items = items_run(output)
        (trivial / "test_trivial.py").write_text(
            "import pytest\n\n\n"
            f"@pytest.mark.parametrize('n', range({items}))\n"
            "def test_trivial(n):\n    assert n >= 0\n"
        )
        python = [sys.executable, "-c"]
        # --collect-only exits 7 here: the distill step finds no graded teacher items to train on.
        runs = {
            "startup": ([PYTEST, *QUIET, *REPLAY, "--collect-only"], project, None),
            "replay": ([PYTEST, *QUIET, *REPLAY], project, 0),
            "python": ([*python, "pass"], project, 0),
            "imports": ([*python, "import openai, scipy.special"], project, 0),
            "trivial startup": ([PYTEST, *QUIET, "--collect-only"], trivial, 0),
            "trivial run": ([PYTEST, *QUIET], trivial, 0),
        }
        best: dict[str, Timing] = {}
        for n in range(repeat + 1):  # the first round fills the byte-code cache, untimed
            for name, (command, cwd, rc) in runs.items():
                timing, output, code = timed(command, cwd, env)
                if rc is not None and code != rc:
                    raise SystemExit(f"{' '.join(command)} exited {code}:\n{output[-3000:]}")
                if n:
                    old = best.get(name, timing)
                    best[name] = Timing(min(old.wall, timing.wall), min(old.cpu, timing.cpu))

    beyond = best["replay"] - best["startup"]
    imports = best["imports"] - best["python"]
    trivial_beyond = best["trivial run"] - best["trivial startup"]

    def line(label: str, t: Timing, digits: int = 2) -> None:
        print(f"  {label:<58} {t.wall:8.{digits}f} {t.cpu:8.{digits}f}")

    how = "that caches byte code" if cache else "(byte code as this environment has it)"
    print(f"example project, offline replay of {items} items: best of {repeat} rounds,")
    print(f"after one {how}")
    print(f"  {'':<58} {'wall s':>8} {'cpu s':>8}")
    line("pytest start-up + collection (--collect-only)", best["startup"])
    line("full replay (--distill --distill-record-mode=none)", best["replay"])
    line("replay beyond start-up", beyond)
    line("  of which importing openai and scipy.special (once)", imports)
    line("replay per 100 items beyond start-up", beyond.per_100(items), 3)
    line("  the same without those two imports", (beyond - imports).per_100(items), 3)
    print(f"reference: pytest itself, {items} trivial tests")
    line("start-up + collection (--collect-only)", best["trivial startup"])
    line("full run", best["trivial run"])
    line("per 100 tests beyond start-up", trivial_beyond.per_100(items), 3)
    sys.stdout.flush()


def interaction(n: int) -> dict[str, Any]:
    body = {
        "model": "student",
        "messages": [
            {"role": "system", "content": "Reply with the code."},
            {"role": "user", "content": f"Which code goes with item {n}?"},
        ],
        "temperature": 0,
    }
    reply = {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "created": 0,
        "model": "student",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": f"CODE-{n}"},
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14},
    }
    return {
        "request": {
            "method": "POST",
            "uri": f"{BASE}/chat/completions",
            "headers": {"content-type": ["application/json"]},
            "body": {"json": body},
        },
        "response": {
            "status": {"code": 200, "message": "OK"},
            "headers": {"content-type": ["application/json"]},
            "body": {"json": reply},
        },
    }


def ask(client: openai.OpenAI, n: int) -> str:
    body = interaction(n)["request"]["body"]["json"]
    reply = client.chat.completions.create(**body)
    return reply.choices[0].message.content or ""


def distill_replay(root: Path, items: int) -> float:
    for n in range(items):
        cassettes.dump(root / f"suite.eval.yaml/i{n}[student].json", [interaction(n)], {})
    recorder = recording.Recorder(recording.SessionCassette(root, "none", root))
    # The plugin's clients send through the recorder's transport; nothing else is patched.
    http_client = openai.DefaultHttpx2Client(transport=recorder.transport())
    client = openai.OpenAI(base_url=BASE, api_key="x", max_retries=0, http_client=http_client)
    try:
        started = time.perf_counter()
        for n in range(items):
            with recording.route(recording.item_route(f"suite.eval.yaml::i{n}[student]")):
                assert ask(client, n) == f"CODE-{n}"
        return time.perf_counter() - started
    finally:
        client.close()


def vcrpy_replay(root: Path, items: int) -> float:
    """vcrpy's own cassette format and matching: one file, every request compared in turn."""
    path = root / "vcrpy.json"
    recorded = []
    for n in range(items):
        data = interaction(n)
        request, response = data["request"], data["response"]
        recorded.append(
            {
                "request": {
                    "method": "POST",
                    "uri": request["uri"],
                    "headers": {"content-type": ["application/json"]},
                    "body": json.dumps(request["body"]["json"]),
                },
                "response": {
                    "status": response["status"],
                    "headers": response["headers"],
                    "body": {"string": json.dumps(response["body"]["json"])},
                },
            }
        )
    path.write_text(json.dumps({"version": 1, "interactions": recorded}))
    client = openai.OpenAI(base_url=BASE, api_key="x", max_retries=0)
    tape = vcr.VCR(serializer="json", record_mode="none", match_on=["method", "path", "body"])
    try:
        started = time.perf_counter()
        with tape.use_cassette(str(path)):
            for n in range(items):
                assert ask(client, n) == f"CODE-{n}"
        return time.perf_counter() - started
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["example", "cassettes"], help="one section only")
    parser.add_argument("--repeat", type=int, default=3, help="example: runs per figure")
    parser.add_argument(
        "--environment-bytecode",
        action="store_true",
        help="example: keep PYTHONDONTWRITEBYTECODE and the byte-code cache as the environment has "
        "them (where it is set, every run compiles, and rewrites pytest plugins' asserts, anew)",
    )
    parser.add_argument("--items", type=int, nargs="+", default=[100, 200, 400, 800])
    parser.add_argument(
        "--vcrpy-up-to",
        type=int,
        default=400,
        help="time vcrpy's own matching up to this many items (quadratic: 800 take minutes)",
    )
    args = parser.parse_args()
    if args.only != "cassettes":
        example_replay(args.repeat, cache=not args.environment_bytecode)
    if args.only != "example":
        cassette_replay(args.items, args.vcrpy_up_to)


def cassette_replay(sizes: list[int], vcrpy_up_to: int) -> None:
    print(f"{'items':>6} {'pytest-distill s':>17} {'ms/item':>8} {'vcrpy s':>9} {'ms/item':>8}")
    for items in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            ours = distill_replay(Path(tmp) / "ours", items)
            theirs = vcrpy_replay(Path(tmp), items) if items <= vcrpy_up_to else None
        line = f"{items:>6} {ours:>17.3f} {1000 * ours / items:>8.2f}"
        if theirs is not None:
            line += f" {theirs:>9.3f} {1000 * theirs / items:>8.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
