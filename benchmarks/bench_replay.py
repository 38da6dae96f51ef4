"""Replay time: the example project's offline replay under the real ``pytest`` command, and
pytest-distill's cassettes next to vcrpy's own as the number of items grows.

``example``: a copy of ``example_project/`` in a temporary directory, run by this environment's
``pytest`` in subprocesses: its start-up and collection (``--collect-only``), its full replay
(``--distill --distill-record-mode=none``, whose gate must pass), and what the replay costs per
100 items beyond start-up; next to it, as the reference, pytest's own cost per 100 trivial tests
beyond its start-up. Each figure is the best of ``--repeat`` runs, after one untimed run that
fills a byte-code cache of the benchmark's own (``PYTHONPYCACHEPREFIX``), as Python keeps one on
a laptop; before/after figures: run it on each checkout, in the same machine state.

``cassettes``: each item is one chat completion (a distinct prompt), replayed through the OpenAI
SDK over httpx2 with nothing listening. pytest-distill keeps one JSON cassette per item and
finds a request through a dict index; vcrpy, given one cassette with every interaction and body
matching, compares each request with the recorded ones in turn (quadratic overall).

    python benchmarks/bench_replay.py [--only example|cassettes] [--repeat 3]
        [--items 100 200 400 800] [--vcrpy-up-to 400]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
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


def timed_pytest(
    project: Path, env: dict[str, str], *args: str
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """One ``pytest`` process run in ``project``: its wall time and its result."""
    started = time.perf_counter()
    done = subprocess.run(
        [PYTEST, *QUIET, *args], cwd=project, env=env, capture_output=True, text=True, check=False
    )
    return time.perf_counter() - started, done


def items_run(output: str) -> int:
    """The items of pytest's summary line (``405 passed, 195 below passing in 3.58s``)."""
    summary = [line for line in output.splitlines() if OUTCOMES.search(line)][-1]
    return sum(int(n) for n in OUTCOMES.findall(summary))


def best_of(
    repeat: int, project: Path, env: dict[str, str], *args: str, rc: int | None = 0
) -> tuple[float, str]:
    """The least wall time of ``repeat`` runs after one untimed run (it fills the byte code
    cache), and the last run's output."""
    times, output = [], ""
    timed_pytest(project, env, *args)
    for _ in range(repeat):
        seconds, done = timed_pytest(project, env, *args)
        output = done.stdout + done.stderr
        if rc is not None and done.returncode != rc:
            raise SystemExit(f"pytest {' '.join(args)} exited {done.returncode}:\n{output[-3000:]}")
        times.append(seconds)
    return min(times), output


def per_100(startup: float, run: float, items: int) -> float:
    return 100 * (run - startup) / items


def example_replay(repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "example_project"
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns(".distill", "__pycache__"))
        # --collect-only exits 7 here: the distill step finds no graded teacher items to train on.
        env = bytecode_cache(Path(tmp))
        startup, _ = best_of(repeat, project, env, *REPLAY, "--collect-only", rc=None)
        replay, output = best_of(repeat, project, env, *REPLAY)
        items = items_run(output)

        trivial = Path(tmp) / "trivial"
        trivial.mkdir()
        (trivial / "pytest.ini").write_text("[pytest]\n")
        (trivial / "test_trivial.py").write_text(
            "import pytest\n\n\n"
            f"@pytest.mark.parametrize('n', range({items}))\n"
            "def test_trivial(n):\n    assert n >= 0\n"
        )
        trivial_startup, _ = best_of(repeat, trivial, env, "--collect-only")
        trivial_run, _ = best_of(repeat, trivial, env)

    print(
        f"example project, offline replay of {items} items (best of {repeat} runs each, "
        "after one that caches byte code)"
    )
    print(f"  pytest start-up + collection (--collect-only) {startup:8.2f} s")
    print(f"  full replay (--distill-record-mode=none)       {replay:8.2f} s")
    print(f"  replay beyond start-up                        {replay - startup:8.2f} s")
    print(
        f"  replay per 100 items beyond start-up          {per_100(startup, replay, items):8.3f} s"
    )
    print(f"reference: pytest itself, {items} trivial tests")
    print(f"  start-up + collection (--collect-only)        {trivial_startup:8.2f} s")
    print(f"  full run                                      {trivial_run:8.2f} s")
    print(
        f"  per 100 tests beyond start-up                 "
        f"{per_100(trivial_startup, trivial_run, items):8.3f} s",
        flush=True,
    )


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
    parser.add_argument("--items", type=int, nargs="+", default=[100, 200, 400, 800])
    parser.add_argument(
        "--vcrpy-up-to",
        type=int,
        default=400,
        help="time vcrpy's own matching up to this many items (quadratic: 800 take minutes)",
    )
    args = parser.parse_args()
    if args.only != "cassettes":
        example_replay(args.repeat)
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
