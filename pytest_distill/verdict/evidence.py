"""What the gate reads: the results of its split less every case a fine-tuned model trained
on, each role's figures by label (``finetuned``, ``finetuned[suite]``) and paired comparisons
of two labels over the cases both ran. The summary and the JSON report show the same pairs.

A case where either role errored (no grade: a cassette miss, a failed call) is no pair: its
score is no measurement. A comparison left with no pairs says how many cases errored; one
with fewer than ``MIN_PAIRED_CASES`` says "too few cases" instead of an interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_distill.records import Attempt, ItemResult
from pytest_distill.verdict.gate import Gate, RoleStats
from pytest_distill.verdict.leakage import Exclusion, leaked_cases, training_sets
from pytest_distill.verdict.stats import MIN_PAIRED_CASES, Pair, compare, power
from pytest_distill.verdict.view import in_role_order


def parse_label(label: str) -> tuple[str, str | None]:
    """``finetuned[meetings]`` -> (``finetuned``, ``meetings``); ``teacher`` -> (``teacher``,
    None)."""
    if label.endswith("]") and "[" in label:
        role, suite = label[:-1].split("[", 1)
        return role, suite
    return label, None


@dataclass(frozen=True, slots=True)
class Comparison:
    """``a - b``: the pair over the cases both ran with a grade, and how many shared cases
    errored in either role (left out)."""

    a: str
    b: str
    pair: Pair | None  # None: no case left to pair
    errored: int

    @property
    def label(self) -> str:
        return f"{self.a} - {self.b}"

    def line(self) -> str:
        if self.pair is None:
            return f"{self.label}: no paired cases ({self.errored} errored)"
        return self.pair.line(self.errored)


@dataclass(frozen=True)
class Evidence:
    items: tuple[ItemResult, ...]
    exclusions: tuple[Exclusion, ...]
    confidence: float
    repeats: int = 1
    _pairs: dict[tuple[str, str], Comparison] = field(default_factory=dict, repr=False)

    @classmethod
    def gather(
        cls,
        items: Sequence[ItemResult],
        *,
        confidence: float,
        rootpath: Path,
        finetuned_model: str | None = None,
        repeats: int = 1,
    ) -> Evidence:
        """``items``: the gate's split. Cases a fine-tuned model trained on leave every role's
        results, so each role is still measured on the same cases."""
        trained = any(r.role in ("finetuned", "sft") for r in items)
        sets = training_sets(rootpath) if trained else {}
        models = (finetuned_model,) if finetuned_model else ()
        leaked, exclusions = leaked_cases(items, sets, models)
        kept = tuple(r for r in items if (r.suite, r.case_id) not in leaked)
        return cls(kept, exclusions, confidence, repeats)

    def roles(self) -> list[str]:
        return in_role_order(r.role for r in self.items)

    def suites(self) -> list[str]:
        return sorted({r.suite for r in self.items})

    def select(self, label: str) -> list[ItemResult]:
        role, suite = parse_label(label)
        return [r for r in self.items if r.role == role and suite in (None, r.suite)]

    def role_stats(self, to_stats: Callable[[list[ItemResult]], RoleStats]) -> dict[str, RoleStats]:
        """Every role's figures, and every role's on each suite, by label."""
        labels = [*self.roles(), *(f"{r}[{s}]" for r in self.roles() for s in self.suites())]
        return {label: to_stats(found) for label in labels if (found := self.select(label))}

    def pair(self, a: str, b: str) -> Pair | None:
        """``a - b`` over the cases both ran with a grade (one score per case: the mean of its
        repeats); None when there are none."""
        return self.comparison(a, b).pair

    def comparison(self, a: str, b: str) -> Comparison:
        if (a, b) not in self._pairs:
            left = {(r.suite, r.case_id): r for r in self.select(a)}
            right = {(r.suite, r.case_id): r for r in self.select(b)}
            shared = sorted(left.keys() & right.keys())
            graded = [k for k in shared if left[k].error is None and right[k].error is None]
            scores = [left[k].score for k in graded], [right[k].score for k in graded]
            pair = compare(a, b, *scores, self.confidence) if graded else None
            self._pairs[(a, b)] = Comparison(a, b, pair, len(shared) - len(graded))
        return self._pairs[(a, b)]

    def pairs(self, gate: Gate | None = None) -> list[Pair]:
        """The pairs of :meth:`comparisons` that have cases."""
        return [c.pair for c in self.comparisons(gate) if c.pair is not None]

    def comparisons(self, gate: Gate | None = None) -> list[Comparison]:
        """The gate's pairs, then each later role against each earlier one, overall and per
        suite (when there is more than one)."""
        wanted = dict.fromkeys(gate.differences() if gate else ())
        roles = [r for r in self.roles() if r != "judge"]
        scopes = [""] + ([f"[{s}]" for s in self.suites()] if len(self.suites()) > 1 else [])
        for scope in scopes:
            for i, a in reversed(list(enumerate(roles))):
                for b in roles[:i]:
                    wanted[(a + scope, b + scope)] = None
        found = [self.comparison(a, b) for a, b in wanted]
        return [c for c in found if c.pair is not None or c.errored]


def summary_lines(evidence: Evidence, gate: Gate | None) -> list[str]:
    """Above the gate: the paired comparisons, repeats and what was excluded."""
    lines = [e.line() for e in evidence.exclusions]
    if evidence.repeats > 1 and evidence.roles():
        lines.append(_repeats_line(evidence))
    found = evidence.comparisons(gate)
    if found:
        lines.append(f"paired differences ({evidence.confidence:.0%} CI, by case):")
        lines += [f"  {c.line()}" for c in found]
    return lines


def _repeats_line(evidence: Evidence) -> str:
    k = evidence.repeats
    cells = []
    for role in evidence.roles():
        found = evidence.select(role)
        all_passed = sum(all(r.outcomes) for r in found) / len(found)
        any_passed = sum(any(r.outcomes) for r in found) / len(found)
        cells.append(f"{role} {all_passed:.3f} / {any_passed:.3f}")
    return f"repeats: {k} per case; pass^{k} / pass@{k} of cases: " + ", ".join(cells)


def power_lines(evidence: Evidence, gate: Gate | None) -> list[str]:
    """Under the gate: what each non-inferiority clause can detect with this holdout."""
    lines = []
    for test in gate.tests() if gate else ():
        pair = evidence.pair(test.a.label, test.b.label)
        if test.name == "noninferior" and pair is not None and not pair.too_few:
            lines.append(power(pair, test.margin).line())
    return lines


def to_json(evidence: Evidence, gate: Gate | None) -> dict[str, Any]:
    """The report's ``paired`` section (``docs/report.md``)."""
    return {
        "confidence": evidence.confidence,
        "repeats": evidence.repeats,
        "excluded": [{"model": e.model, "cases": e.cases} for e in evidence.exclusions],
        "min_cases": MIN_PAIRED_CASES,
        "pairs": [_pair_json(c) for c in evidence.comparisons(gate)],
    }


def attempt_json(attempt: Attempt) -> dict[str, Any]:
    """One repeat of an item, for the report's ``attempts``."""
    call = attempt.call
    return {
        "passed": attempt.passed,
        "score": round(attempt.score, 6),
        "reply": call.reply if call else None,
        "completion_id": call.completion_id if call else None,
        "grades": [
            {"name": g.name, "score": round(g.score, 6), "passed": g.passed, "reason": g.reason}
            for g in attempt.grades
        ],
    }


def _pair_json(found: Comparison) -> dict[str, Any]:
    """Below ``MIN_PAIRED_CASES`` the interval fields are null and ``too_few`` is true; with no
    pair at all, ``n`` is 0 and ``errored`` says why."""

    def num(value: float | None) -> float | None:
        return None if value is None or value in (float("inf"), float("-inf")) else round(value, 6)

    pair = found.pair
    if pair is None:
        empty = dict.fromkeys(("mean_difference", "sd", "se", "low", "high", "lower_bound"))
        return {
            "a": found.a,
            "b": found.b,
            "n": 0,
            **empty,
            "correlation": None,
            "better": 0,
            "worse": 0,
            "binary": None,
            "exact_p": None,
            "bootstrap": None,
            "too_few": True,
            "errored": found.errored,
        }
    few = pair.too_few
    return {
        "a": pair.a,
        "b": pair.b,
        "n": pair.n,
        "mean_difference": num(pair.mean),
        "sd": num(pair.sd),
        "se": num(pair.se),
        "low": None if few else num(pair.low),
        "high": None if few else num(pair.high),
        "lower_bound": None if few else num(pair.lower_bound),
        "correlation": num(pair.correlation),
        "better": pair.better,
        "worse": pair.worse,
        "binary": pair.binary,
        "exact_p": pair.exact_p,  # unrounded: a p-value can be small
        "bootstrap": [num(v) for v in pair.bootstrap] if pair.bootstrap and not few else None,
        "too_few": few,
        "errored": found.errored,
    }
