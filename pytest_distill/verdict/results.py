"""Aggregation of the per-item records (:mod:`pytest_distill.records`) the controller saw:
figures by role, split and suite, and their cost.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from pytest_distill.options.pricing import batch_factor, price_for
from pytest_distill.records import ItemResult
from pytest_distill.roles import CallRecord
from pytest_distill.verdict.view import in_role_order


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
    tool_score: float | None = None  # tool-call accuracy: the tool_calls graders' mean score

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
        return in_role_order(r.role for r in self.items)

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
    tools = [r.tool_score for r in graded if r.tool_score is not None]
    return Aggregate(
        tool_score=sum(tools) / len(tools) if tools else None,
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
        cost = call.prompt_tokens * price.prompt + call.completion_tokens * price.completion
        total += cost * (batch_factor(prices) if call.batch_id else 1.0)
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
