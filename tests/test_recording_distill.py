"""A whole ``pytest --distill`` recorded against live servers, then replayed with none running."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from scripted_server import ScriptedServer
from test_distill import ANSWER, ini, suite

GATE = "finetuned >= student + 0.5"


def _teacher(model: str, messages: list[dict[str, Any]]) -> str:
    item = int(messages[-1]["content"].rsplit(" ", 1)[1].rstrip("?"))
    return "zebra?" if item % 7 == 3 else ANSWER


def _run(pytester: pytest.Pytester, mode: str, *args: str) -> tuple[Any, float, dict[str, Any]]:
    started = time.perf_counter()
    result = pytester.runpytest(
        "--distill", f"--distill-record-mode={mode}", "--distill-report=report.json",
        f"--distill-gate={GATE}", *args,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    report = json.loads((pytester.path / "report.json").read_text())
    scores = {i["nodeid"]: (i["passed"], i["score"]) for i in report["items"]}
    return result, elapsed, {"scores": scores, "outcomes": result.parseoutcomes()}


def _gate_line(result: Any) -> list[str]:
    return [line for line in result.stdout.lines if line.startswith("gate ")]


def _training_file(root: Path) -> bytes:
    [dataset] = (root / ".distill" / "datasets").glob("*/train.jsonl")
    return dataset.read_bytes()


def test_distill_run_replays_offline_with_the_same_outcomes_training_file_and_gate(
    pytester: pytest.Pytester, tiny_model: Path
) -> None:
    tiny = tiny_model
    pytester.makefile(".eval.yaml", codes=suite())
    with ScriptedServer(_teacher) as teacher:
        pytester.makeini(ini(teacher.base_url, tiny))
        live, live_s, recorded = _run(pytester, "once")
    assert live.ret == 0, live.stdout.str()
    trained = _training_file(pytester.path)
    # A fresh checkout: no state, no training set, no server data; only the cassettes.
    shutil.rmtree(pytester.path / ".distill")
    assert (pytester.path / "cassettes" / "distill").is_dir()

    replay, replay_s, replayed = _run(pytester, "none")
    assert replay.ret == live.ret, replay.stdout.str()
    assert replayed == recorded
    assert _gate_line(replay) == _gate_line(live) != []
    assert _training_file(pytester.path) == trained
    assert not (pytester.path / ".distill" / "server").exists()  # no embedded server, no model
    # Timing is the benchmark's job (benchmarks/bench_record_replay.py, on the real model);
    # a timed assertion here would only measure how busy the machine is.
    print(f"\nlive {live_s:.2f} s, replay {replay_s:.2f} s ({replay_s / live_s:.1%})")

    # Other hyperparameters: another job key, so the distill step misses, in one line.
    pytester.makeini(ini("http://127.0.0.1:9/v1", tiny).replace("n_epochs = 6", "n_epochs = 7"))
    changed = pytester.runpytest("--distill", "--distill-record-mode=none")
    assert changed.ret == 7
    changed.stdout.fnmatch_lines(
        [
            "distill: the trainer endpoint local failed: CassetteMiss: GET /v1/fine_tuning/jobs?"
            "* has no recorded response; cassettes/distill/*.json: closest recorded "
            "GET /v1/fine_tuning/jobs?* differs in query.metadata?distill_key?: recorded *; "
            "record it with: pytest --distill --distill-record-mode=all*"
        ]
    )
