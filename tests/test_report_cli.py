"""``distill-report REPORT.json`` alone: the saved report's summary on the terminal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import report_factory as factory

from pytest_distill.verdict.cli import main as distill_report

OUTCOMES = {
    "d1": {"teacher": True, "student": False, "finetuned": True},
    "d2": {"teacher": True, "student": False, "finetuned": False},
}


def test_the_bare_form_prints_the_verdict_the_roles_and_the_gate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "report.json"
    source.write_text(json.dumps(factory.report(OUTCOMES, gate_passed=False, exit_code=6)))
    assert distill_report([str(source)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("pytest-distill report (pytest-distill/report/1")
    assert lines[1] == "Gate failed: finetuned >= 0.95 * teacher (exit code 6)"
    assert lines[2] == "holdout cases, by role:"
    assert lines[3].split() == [
        "cases", "pass", "score", "prompt", "tok", "compl", "tok", "p50", "ms", "cost"
    ]  # fmt: skip
    assert lines[4].split()[:4] == ["teacher", "2", "100.0%", "1.000"]
    assert lines[5].split()[:4] == ["student", "2", "0.0%", "0.000"]
    assert lines[6].split()[:4] == ["finetuned", "2", "50.0%", "0.500"]
    assert lines[7:] == [
        "gate on holdout cases: finetuned >= 0.95 * teacher",
        "  FAIL finetuned 0.700 >= 0.95 * teacher 0.800 = 0.760",
    ]
    assert not list(tmp_path.glob("*.html"))


def test_the_bare_form_of_a_passed_gate_and_of_no_gate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "report.json"
    source.write_text(json.dumps(factory.report(OUTCOMES, exit_code=0)))
    assert distill_report([str(source)]) == 0
    out = capsys.readouterr().out
    assert "Gate passed on holdout cases: finetuned >= 0.95 * teacher (exit code 0)" in out
    assert "  ok   finetuned 0.700" in out
    source.write_text(json.dumps({**factory.report(OUTCOMES), "gate": None}))
    assert distill_report([str(source)]) == 0
    out = capsys.readouterr().out
    assert "No gate configured (ini distill_gate)" in out and "gate on" not in out


def test_the_bare_form_still_refuses_a_file_that_is_not_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.json"
    other.write_text("{}")
    assert distill_report([str(other)]) == 2
    assert "is not a pytest-distill report" in capsys.readouterr().err
