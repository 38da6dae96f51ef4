"""Per-item outcomes, carried on test reports so that aggregation is the same under xdist.

Each eval item appends its :class:`ItemResult` as JSON to ``user_properties``; the
controller (the only process under xdist that sees every report) reads it back in
``pytest_runtest_logreport``. Scores, role and split stay as JUnit properties; the bulky
record (messages and reply) is taken off the report once read.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pytest

from pytest_distill.options.pricing import price_for
from pytest_distill.roles import CallRecord

RECORD_PROPERTY = "distill_record"


@dataclass(frozen=True, slots=True)
class GradeRecord:
    name: str
    score: float
    passed: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One of a case's repeats (``--distill-repeats``): its own call and grades."""

    passed: bool
    score: float
    call: CallRecord | None = None
    grades: tuple[GradeRecord, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["call"] = self.call.to_json() if self.call else None
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Attempt:
        call = CallRecord.from_json(data["call"]) if data.get("call") else None
        return cls(
            data["passed"], data["score"], call, tuple(GradeRecord(**g) for g in data["grades"])
        )


@dataclass(frozen=True, slots=True)
class ItemResult:
    nodeid: str
    suite: str
    case_id: str
    role: str
    split: str
    passed: bool
    score: float
    grades: tuple[GradeRecord, ...] = ()
    call: CallRecord | None = None
    calls: int = 1
    location: str | None = None  # where the case is written, ``cases.jsonl:17``
    train_messages: tuple[dict[str, Any], ...] | None = None  # the student's prompt, if known
    reference: Any = None  # the case's reference answer, if it has one
    case_sha256: str = ""  # the case's content (EvalCase.fingerprint), "" when unknown
    # With --distill-repeats N > 1: every repeat; ``score`` is their mean, ``passed`` all of
    # them passing, ``call`` and ``grades`` the first one's.
    attempts: tuple[Attempt, ...] = ()

    @property
    def outcomes(self) -> tuple[bool, ...]:
        return tuple(a.passed for a in self.attempts) or (self.passed,)

    @property
    def all_calls(self) -> tuple[CallRecord, ...]:
        calls = tuple(a.call for a in self.attempts if a.call is not None)
        return calls or ((self.call,) if self.call is not None else ())

    error: str | None = None  # no grade: the model call or a grader could not run (one line)

    @property
    def graded_failure(self) -> bool:
        """Failed because a grader scored it below passing: a measurement, not a bug."""
        return self.error is None and not self.passed and any(not g.passed for g in self.grades)

    def properties(self) -> list[tuple[str, object]]:
        """What goes on the report: JUnit-friendly scalars, then the whole record."""
        return [
            ("distill_role", self.role),
            ("distill_split", self.split),
            ("distill_score", f"{self.score:.4f}"),
            ("distill_passed", "true" if self.passed else "false"),
            (RECORD_PROPERTY, json.dumps(self.to_json(), ensure_ascii=False)),
        ]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["call"] = self.call.to_json() if self.call else None
        data["attempts"] = [a.to_json() for a in self.attempts]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ItemResult:
        call = CallRecord.from_json(data["call"]) if data.get("call") else None
        grades = tuple(GradeRecord(**g) for g in data.get("grades", ()))
        train = data.get("train_messages")
        return cls(
            **{
                **data,
                "call": call,
                "grades": grades,
                "train_messages": tuple(train) if train is not None else None,
                "attempts": tuple(Attempt.from_json(a) for a in data.get("attempts", ())),
            }
        )


def take_from(user_properties: list[tuple[str, object]]) -> ItemResult | None:
    """Read this item's record off a report's properties, removing the bulky JSON.

    Every phase's report carries the item's properties (junitxml writes them from the
    teardown report), so each phase's copy is removed; only the call phase's is returned.
    """
    found = [v for n, v in user_properties if n == RECORD_PROPERTY]
    user_properties[:] = [(n, v) for n, v in user_properties if n != RECORD_PROPERTY]
    return ItemResult.from_json(json.loads(str(found[-1]))) if found else None


@dataclass(frozen=True, slots=True)
class Aggregate:
    """Figures for one group of results (a role, or a role within a suite).

    ``n`` counts every item, ``errors`` those without a grade (a cassette miss, a failed call,
    a grader that could not run); ``score`` and ``pass_rate`` are over the graded ones and
    ``None`` when there are none, as ``cost`` is when no call was made or one has no price.
    """

    n: int
    passed: int
    score: float | None
    prompt_tokens: int
    completion_tokens: int
    calls: int
    latencies: tuple[float, ...]
    cost: float | None
    passes: float = 0.0  # the cases' shares of passing repeats, summed (= passed without repeats)
    passed_any: int = 0  # cases with at least one passing repeat
    errors: int = 0  # cases with no grade: the call or a grader could not run

    @property
    def graded(self) -> int:
        return self.n - self.errors

    @property
    def pass_rate(self) -> float | None:
        """The share of graded runs that passed: of cases, or with repeats of case x repeat."""
        return self.passes / self.graded if self.graded else None

    @property
    def pass_k(self) -> float | None:
        """The share of graded cases whose every repeat passed (pass^k)."""
        return self.passed / self.graded if self.graded else None

    @property
    def pass_at_k(self) -> float | None:
        """The share of graded cases with at least one passing repeat (pass@k)."""
        return self.passed_any / self.graded if self.graded else None


@dataclass
class Results:
    """Everything the controller saw, in report order."""

    items: list[ItemResult] = field(default_factory=list)

    def add(self, result: ItemResult) -> None:
        self.items.append(result)

    def roles(self) -> list[str]:
        order = ("teacher", "student", "finetuned", "judge")
        seen = {r.role for r in self.items}
        return [r for r in order if r in seen] + sorted(seen - set(order))

    def select(
        self, *, role: str | None = None, split: str | None = None, suite: str | None = None
    ) -> list[ItemResult]:
        return [
            r
            for r in self.items
            if (role is None or r.role == role)
            and (split is None or r.split == split)
            and (suite is None or r.suite == suite)
        ]

    def has_holdout(self) -> bool:
        return any(r.split == "holdout" for r in self.items)


def aggregate(results: Sequence[ItemResult], prices: Mapping[str, Any]) -> Aggregate:
    calls = [c for r in results for c in r.all_calls]
    graded = [r for r in results if r.error is None]
    return Aggregate(
        n=len(results),
        passed=sum(r.passed for r in graded),
        score=sum(r.score for r in graded) / len(graded) if graded else None,
        prompt_tokens=sum(c.prompt_tokens for c in calls),
        completion_tokens=sum(c.completion_tokens for c in calls),
        calls=len(calls),
        latencies=tuple(sorted(c.latency_s for c in calls)),
        cost=_cost(calls, prices),
        passes=sum(sum(r.outcomes) / len(r.outcomes) for r in graded),
        passed_any=sum(any(r.outcomes) for r in graded),
        errors=len(results) - len(graded),
    )


def _cost(calls: Sequence[CallRecord], prices: Mapping[str, Any]) -> float | None:
    if not calls:
        return None  # nothing was spent on nothing; 0.0 would read as a measured cost
    total = 0.0
    for call in calls:
        price = price_for(call.model, prices)
        if price is None:
            return None
        total += call.prompt_tokens * price.prompt + call.completion_tokens * price.completion
    return total / 1e6


def group_by_suite(results: Sequence[ItemResult]) -> dict[str, list[ItemResult]]:
    groups: dict[str, list[ItemResult]] = defaultdict(list)
    for result in results:
        groups[result.suite].append(result)
    return dict(groups)


RESULTS_KEY = pytest.StashKey[Results]()


def results_of(config: pytest.Config) -> Results:
    """The results this process has seen (every worker's, on an xdist controller)."""
    return config.stash.setdefault(RESULTS_KEY, Results())
