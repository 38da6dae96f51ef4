"""The example project: its recording replays offline, and a live run still matches it.

The replay runs by default (no model is needed). The live run is ``slow``: it runs the whole
distillation on SmolLM2 on the CPU, several minutes, and CI runs it as a step of its own
(``pytest -m slow``).
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "example_project"
ROLES = ("teacher", "student", "finetuned")
TOLERANCE = 0.05
"""How far a live run's holdout score may be from the recorded one, per role (5 of 100 cases).

Calls are batched as they arrive, so batch composition, and with it the last bits of a
float, differ from run to run; now and then a greedy choice flips."""


def _copy_example(to: Path) -> Path:
    """The example as a fresh clone has it: no state, no report, no log."""
    ignore = shutil.ignore_patterns(".distill", "report.json", "run.log", "__pycache__")
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
    sys.path.insert(0, str(EXAMPLE))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(EXAMPLE))


def test_example_cases_are_what_the_seeded_generator_writes_and_their_references_check() -> None:
    generator = _import_from_example("generate_cases")
    for suite in generator.SUITES:
        committed = generator.path_of(suite).read_text(encoding="utf-8")
        cases = generator.generate(suite, 150, 50, 0.2)
        assert "\n".join(generator.lines(cases)) + "\n" == committed, suite
        generator.check(suite, cases)
    # The check reads the text on its own: a wrong reference stops it, naming the case.
    date = next(c for c in generator.generate("due_dates", 150, 50, 0.2) if c["id"] == "due-001")
    date["reference"] = "2099-01-01"
    with pytest.raises(SystemExit, match="due_dates due-001: the text says"):
        generator.check("due_dates", [date])


def _score_cells(markdown: str) -> list[str]:
    """The results table's rows (a replay's table has no latency column)."""
    return [line for line in markdown.splitlines() if line.startswith("| **")]


def test_example_replays_its_recording_offline_and_matches_its_readme(tmp_path: Path) -> None:
    project = _copy_example(tmp_path / "example")
    result, report = _run(project, "none")
    assert result.returncode == 0, result.stdout[-3000:]
    assert report["gate"]["passed"] is True
    assert not (project / ".distill" / "server").exists()  # no embedded server, no model
    assert "gate passed" in result.stdout

    replayed = "\n".join(_import_from_example("results_table").table(report, replay=True))
    gate_lines = [line for line in replayed.splitlines() if line.startswith("- `")]
    for readme in (EXAMPLE / "README.md", EXAMPLE.parent / "README.md"):
        text = readme.read_text(encoding="utf-8")
        # The READMEs' numbers are the recorded run's: replaying it prints the same table.
        assert _score_cells(replayed) == _score_cells(text) != [], readme
        assert all(line in text for line in gate_lines), (readme, gate_lines)


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
