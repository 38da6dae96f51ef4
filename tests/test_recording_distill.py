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


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from pytest_distill.local.models import ModelUnavailable
    from pytest_distill.local.tiny import create_tiny_model

    try:
        return create_tiny_model(tmp_path_factory.mktemp("tiny"))
    except ModelUnavailable as exc:
        pytest.skip(str(exc))


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
    pytester: pytest.Pytester, tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
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
    print(f"\nlive {live_s:.2f} s, replay {replay_s:.2f} s ({replay_s / live_s:.1%})")
    # The tiny model trains in seconds, so pytest's own start-up is much of a replay here; with
    # a real model (minutes of inference and training) the replay is a few percent of live.
    assert replay_s < live_s / 3
