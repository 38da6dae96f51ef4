"""The agent example: its recording replays offline, and a live run still matches it.

The replay runs by default (no model is needed). The live run is ``slow``: it runs the whole
distillation on SmolLM2 on the CPU, about 20 minutes, and CI runs it as a step of its own
(``pytest -m slow``).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "example_agent"
ROLES = ("teacher", "student", "finetuned")
TOLERANCE = 0.05
"""How far a live run's holdout score may be from the recorded one, per role (5 of 100 cases).

Calls are batched as they arrive, so batch composition, and with it the last bits of a
float, differ from run to run; now and then a greedy choice flips."""


def _copy_example(to: Path) -> Path:
    """The example as a fresh clone has it: no state, no report, no log."""
    ignore = shutil.ignore_patterns(
        ".distill", "report.json", "report.html", "run.log", "__pycache__"
    )
    shutil.copytree(EXAMPLE, to, ignore=ignore)
    return to


def _run(project: Path, mode: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    command = [
        sys.executable, "-m", "pytest", "--distill", f"--distill-record-mode={mode}",
        "--distill-report=report.json", "-p", "no:cacheprovider", "-q",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=project, capture_output=True, text=True, check=False)
    report_file = project / "report.json"
    assert report_file.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    return result, json.loads(report_file.read_text(encoding="utf-8"))


def _holdout_scores(report: dict[str, Any]) -> dict[str, float]:
    return {role: report["scores"][role]["holdout"]["mean_score"] for role in ROLES}


def _import_from_example(name: str) -> Any:
    """The example's module ``name``, under a name of its own: example_project has modules
    of the same names, and ``sys.modules`` must not hand one example's to the other's test."""
    spec = importlib.util.spec_from_file_location(f"example_agent_{name}", EXAMPLE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_cases_are_what_the_seeded_generator_writes_and_their_references_check() -> None:
    generator = _import_from_example("generate_cases")
    for suite in generator.SUITES:
        committed = generator.path_of(suite).read_text(encoding="utf-8")
        cases = generator.generate(suite, *generator.SIZES[suite], 0.2)
        assert "\n".join(generator.lines(cases)) + "\n" == committed, suite
        generator.check(suite, cases)
    # The check reads the words on its own: a wrong reference stops it, naming the case.
    [ticket] = [
        c for c in generator.generate("desk_requests", 160, 40, 0.2) if c["id"] == "req-013"
    ]
    ticket["reference"] = [
        {"name": "open_ticket", "arguments": {"category": "hardware", "priority": "low"}}
    ]
    with pytest.raises(SystemExit, match="desk_requests req-013: the words say"):
        generator.check("desk_requests", [ticket])
    follow_ups = generator.generate("follow_ups", 100, 30, 0.2)
    [found] = [c for c in follow_ups if c["id"] == "conv-001"]
    found["reference"][0]["arguments"]["username"] = "someone"
    with pytest.raises(SystemExit, match="follow_ups conv-001: 'someone' is not"):
        generator.check("follow_ups", [found])


def _summary_rows(stdout: str) -> list[str]:
    """The holdout table of the run's summary as README.md's Markdown rows: role, cases,
    errors, pass, score, tool calls, prompt and completion tokens (a replay's latency columns
    time the replay, not the model, and are left out)."""
    lines = stdout.splitlines()
    start = lines.index("holdout (the gate's cases):")
    rows = [line.split()[:8] for line in lines[start + 2 : start + 5]]
    assert [row[0] for row in rows] == list(ROLES)
    return ["| " + " | ".join(row) + " |" for row in rows]


def test_example_replays_its_recording_offline_and_matches_its_readme(tmp_path: Path) -> None:
    project = _copy_example(tmp_path / "example")
    result, report = _run(project, "none")
    assert result.returncode == 0, result.stdout[-3000:]
    assert report["gate"]["passed"] is True
    assert not (project / ".distill" / "server").exists()  # no embedded server, no model
    assert "gate passed" in result.stdout
    # Every suite is graded by tool calls: the table's "tool calls" column is the score.
    scores = report["scores"]
    for role in ROLES:
        holdout = scores[role]["holdout"]
        assert holdout["tool_call_accuracy"] == pytest.approx(holdout["mean_score"])
    # The README's table is the recorded run's: replaying it prints the same rows.
    readme = (EXAMPLE / "README.md").read_text(encoding="utf-8")
    rows = _summary_rows(result.stdout)
    assert all(row in readme for row in rows), rows


@pytest.mark.slow
def test_example_live_run_passes_its_gate_within_tolerance_of_the_recording(
    tmp_path: Path,
) -> None:
    recorded = _holdout_scores(_run(_copy_example(tmp_path / "replay"), "none")[1])
    live_result, live_report = _run(_copy_example(tmp_path / "live"), "off")
    print(live_result.stdout[-2500:])
    assert live_result.returncode == 0, live_result.stdout[-3000:]
    assert live_report["gate"]["passed"] is True
    live = _holdout_scores(live_report)
    print(f"holdout scores, recorded: {recorded}; live: {live}; tolerance {TOLERANCE}")
    for role in ROLES:
        assert live[role] == pytest.approx(recorded[role], abs=TOLERANCE), role
