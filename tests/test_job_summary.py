"""The CI job summary appended to ``$GITHUB_STEP_SUMMARY``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import report_factory as factory
from conftest import SUITE

from pytest_distill.verdict import job_summary

LIMIT = 1024 * 1024


def test_summary_is_appended_when_the_variable_is_set_and_says_failed(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = project.path / "step_summary.md"
    target.write_text("earlier step output\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(target))
    project.makefile(".eval.yaml", capitals=SUITE)
    result = project.runpytest("--distill-gate", "student >= teacher")
    assert result.ret == 6
    text = target.read_text()
    assert text.startswith("earlier step output\n")
    lines = text.splitlines()
    assert "gate **failed**" in lines[1] and "passed" not in lines[1]
    assert re.search(r"^\| teacher \| \d \| 100.0% \| 1.000 \|", text, re.MULTILINE)
    assert (
        "**Failing clauses**\n\n- ❌ student &gt;= teacher: 0.500 &gt;= 1.000 -&gt; False\n" in text
    )
    assert "<details><summary>Largest regressions: 4 cases score below the teacher" in text
    assert "Capital of" not in text  # no prompts without distill_summary_cases


def test_summary_lists_prompts_and_replies_only_when_asked(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = project.path / "step_summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(target))
    project.makefile(".eval.yaml", capitals=SUITE)
    project.makeini(
        project.path.joinpath("tox.ini").read_text() + "\ndistill_summary_cases = true\n"
    )
    project.runpytest()
    text = target.read_text()
    assert "no gate" in text.splitlines()[0]
    assert "[user] Capital of Italy?</pre>" in text and "<pre>Milan</pre>" in text


def test_no_summary_without_the_variable_or_without_distill_items(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = pytester.path / "step_summary.md"
    pytester.makeini("[pytest]\ndistill_gate = teacher >= 0.5\n")
    pytester.makepyfile("def test_plain(): pass")
    pytester.runpytest().assert_outcomes(passed=1)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(target))
    pytester.runpytest().assert_outcomes(passed=1)
    assert not target.exists()


@pytest.mark.parametrize("cases", [False, True])
def test_ten_thousand_cases_stay_under_the_limit_and_still_say_failed(
    tmp_path: Path, cases: bool
) -> None:
    data = factory.many(10_000, gate_passed=False)
    target = tmp_path / "summary.md"
    target.write_text("x" * (LIMIT - 40_000))  # what earlier steps of the job wrote
    job_summary.append(target, data, cases=cases)
    assert target.stat().st_size <= LIMIT
    ours = target.read_text()[LIMIT - 40_000 :]
    assert ours.splitlines()[0].startswith("### ❌ pytest-distill: gate **failed**")
    assert ours.count("<details>") == ours.count("</details>")
    if cases:
        assert "truncated to stay under GitHub's 1 MiB limit" in ours
        assert "You turn a ticket" in ours
    else:
        assert "the 50 largest here" in ours


def test_a_full_summary_file_still_gets_the_verdict(tmp_path: Path) -> None:
    target = tmp_path / "summary.md"
    target.write_text("x" * LIMIT)
    job_summary.append(target, factory.many(100, gate_passed=False))
    added = target.read_text()[LIMIT:]
    assert "gate **failed**" in added.splitlines()[0]
    assert "truncated" in added


def test_gate_not_evaluated_never_reads_as_passed() -> None:
    text = job_summary.render(factory.report({"a": {"teacher": True}}, gate_passed=None))
    first = text.splitlines()[0]
    assert "not evaluated" in first and "**passed**" not in first


def test_markdown_in_case_ids_and_reasons_cannot_break_the_table() -> None:
    outcomes = {"x|y<b>": {"teacher": True, "student": False, "finetuned": False}}
    text = job_summary.render(factory.report(outcomes, gate_passed=False))
    assert "| x\\|y&lt;b&gt; | due\\_dates |" in text


def test_counts_are_singular_or_plural() -> None:
    one = job_summary.render(factory.report({"d1": {"teacher": True, "finetuned": False}}))
    assert "Largest regressions: 1 case scores below the teacher" in one
    assert "1 cases" not in one
    two = job_summary.render(
        factory.report({c: {"teacher": True, "finetuned": False} for c in ("d1", "d2")})
    )
    assert "Largest regressions: 2 cases score below the teacher" in two


def test_a_report_where_no_item_ran_shows_the_verdict_and_no_empty_table() -> None:
    data = factory.report({}, gate_passed=None, exit_code=2)
    data["gate"]["reason"] = "gate not evaluated: collection failed (1 error), no item ran"
    data["gate"]["clauses"] = []
    data["scores"] = {}
    text = job_summary.render(data)
    assert text.splitlines()[0] == (
        "### ⚠️ pytest-distill: gate **not evaluated** (not passed): gate not evaluated: "
        "collection failed (1 error), no item ran"
    )
    assert "by role" not in text and "| role |" not in text


def test_a_deferred_run_says_what_to_run_next_in_every_view() -> None:
    """--distill-no-wait: the gate is not evaluated, and the HTML report and the CI job summary
    (both read ``view.verdict``) say what collects the rest, as the terminal does."""
    from pytest_distill.verdict import view

    deferred = "batches still running (batch_abc of role teacher); run the same command again"
    data = {"gate": {"passed": None, "reason": "not evaluated"}, "deferred": deferred}
    found = view.verdict(data)
    assert found.state == "not-evaluated"
    assert found.reason == f"not evaluated; {deferred}"
    assert view.verdict({"gate": {"passed": None}, "deferred": deferred}).reason == deferred
    assert "deferred" not in view.verdict({"gate": {"passed": None, "reason": "x"}}).reason
