"""Paired comparisons over errored and too few cases: no numbers where there are no pairs."""

from __future__ import annotations

from pathlib import Path

from pytest_distill.records import ItemResult
from pytest_distill.verdict import clauses
from pytest_distill.verdict import evidence as paired
from pytest_distill.verdict.gate import Gate


def result(case: str, role: str, score: float, error: str | None = None) -> ItemResult:
    return ItemResult(
        f"x.eval.yaml::{case}[{role}]", "x", case, role, "holdout", score == 1.0, score,
        error=error,
    )  # fmt: skip


def evidence(items: list[ItemResult], tmp_path: Path) -> paired.Evidence:
    return paired.Evidence.gather(items, confidence=0.95, rootpath=tmp_path)


def test_errored_items_are_no_pairs_and_the_summary_says_how_many(tmp_path: Path) -> None:
    missing = "cassette miss"
    items = [
        result(f"c{k}", role, 0.0, missing) for k in range(46) for role in ("teacher", "finetuned")
    ]
    found = evidence(items, tmp_path)
    gate = Gate.parse("noninferior(finetuned, teacher, margin=0.05)")
    assert found.pair("finetuned", "teacher") is None
    lines = paired.summary_lines(found, gate)
    assert "  finetuned - teacher: no paired cases (46 errored)" in lines
    assert not any("CI [" in line for line in lines)
    (entry,) = [p for p in paired.to_json(found, gate)["pairs"] if p["a"] == "finetuned"]
    assert entry["n"] == 0 and entry["errored"] == 46 and entry["too_few"] is True
    assert entry["mean_difference"] is None and entry["low"] is None and entry["exact_p"] is None
    passed, why = clauses.evaluate(gate.tests()[0], found.pair)  # the gate fails closed
    assert passed is False and "0 paired cases" in why


def test_too_few_pairs_print_no_interval_and_the_report_no_fake_numbers(tmp_path: Path) -> None:
    items = [
        result("a", "teacher", 0.0), result("a", "finetuned", 1.0),
        result("b", "teacher", 0.5), result("b", "finetuned", 0.0),
        result("c", "teacher", 1.0, "timeout"), result("c", "finetuned", 1.0),
    ]  # fmt: skip
    found = evidence(items, tmp_path)
    lines = paired.summary_lines(found, None)
    assert (
        "  finetuned - teacher: too few cases (n=2 paired, 1 errored, at least 5 needed)" in lines
    )
    (entry,) = [p for p in paired.to_json(found, None)["pairs"] if p["a"] == "finetuned"]
    assert entry["n"] == 2 and entry["too_few"] is True and entry["errored"] == 1
    assert entry["mean_difference"] == 0.25
    assert (entry["low"], entry["high"], entry["lower_bound"]) == (None, None, None)


def test_enough_pairs_keep_their_interval_inside_minus_one_to_one(tmp_path: Path) -> None:
    scores = [(1.0, 0.0), (1.0, 0.0), (1.0, 0.0), (1.0, 0.0), (1.0, 0.0), (1.0, 1.0)]
    items = [
        r
        for k, (ft, te) in enumerate(scores)
        for r in (result(f"c{k}", "finetuned", ft), result(f"c{k}", "teacher", te))
    ]
    found = evidence(items, tmp_path)
    (entry,) = [p for p in paired.to_json(found, None)["pairs"] if p["a"] == "finetuned"]
    assert entry["too_few"] is False and entry["errored"] == 0
    assert -1.0 <= entry["low"] <= entry["high"] <= 1.0
    line = next(x for x in paired.summary_lines(found, None) if "finetuned - teacher" in x)
    assert "+1.000]" in line and "n=6 paired" in line
