"""JSON reports made for tests: the shape ``verdict/report.py`` writes, with chosen outcomes."""

from __future__ import annotations

from typing import Any

ROLES = ("teacher", "student", "finetuned")
SYSTEM = "You turn a ticket's 'needed by' text into YYYY-MM-DD. " * 8


def agg(cases: int, passed: int, score: float, **extra: Any) -> dict[str, Any]:
    return {
        "cases": cases,
        "passed": passed,
        "pass_rate": passed / cases if cases else 0.0,
        "mean_score": score,
        "prompt_tokens": 120 * cases,
        "completion_tokens": 9 * cases,
        "latency_p50_s": 0.25,
        "latency_p95_s": 0.5,
        "cost_usd": None,
        **extra,
    }


def item(
    suite: str, case: str, role: str, passed: bool, *, split: str = "holdout"
) -> dict[str, Any]:
    reply = f"2027-04-{25 if passed else 26} ({role} on {case})"
    return {
        "nodeid": f"evals/{suite}.eval.yaml::{case}[{role}]",
        "suite": suite,
        "case_id": case,
        "role": role,
        "split": split,
        "passed": passed,
        "score": 1.0 if passed else 0.0,
        "grades": [
            {"name": "string_check", "score": 1.0 if passed else 0.0, "passed": passed,
             "reason": "equal" if passed else f"{reply!r} != '2027-04-25'"}
        ],
        "model": f"model-{role}",
        "completion_id": f"chatcmpl-{case}-{role}",
        "reply": reply,
        "prompt_tokens": 120,
        "completion_tokens": 9,
        "latency_s": 0.25,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Needed by: Sunday, April 25, 2027 ({case})"},
        ],
        "reference": "2027-04-25",
    }  # fmt: skip


def report(
    outcomes: dict[str, dict[str, bool]],
    *,
    gate_passed: bool | None = True,
    suite: str = "due_dates",
    **extra: Any,
) -> dict[str, Any]:
    """``outcomes``: case id -> role -> passed."""
    items = [
        item(suite, case, role, ok)
        for case, roles in outcomes.items()
        for role, ok in roles.items()
    ]
    scores = {}
    for role in ROLES:
        mine = [i for i in items if i["role"] == role]
        passed = sum(i["passed"] for i in mine)
        figures = agg(len(mine), passed, passed / len(mine) if mine else 0.0)
        scores[role] = {"all": figures, "train": agg(0, 0, 0.0), "holdout": figures}
    gate = {
        "expression": "finetuned >= 0.95 * teacher",
        "passed": gate_passed,
        "split": "holdout",
        "reason": "gate failed: finetuned >= 0.95 * teacher" if gate_passed is False else "",
        "missing_roles": [],
        "clauses": [
            {"text": "finetuned >= 0.95 * teacher", "passed": bool(gate_passed),
             "explanation": "finetuned 0.700 >= 0.95 * teacher 0.800 = 0.760"}
        ],
    }  # fmt: skip
    return {
        "schema": "pytest-distill/report/1",
        "pytest_distill": "0.1.0",
        "created": "2026-12-02T12:00:00+00:00",
        "roles": {r: {"model": f"model-{r}", "endpoint": "local"} for r in ROLES},
        "holdout": 0.2,
        "gate": gate,
        "scores": scores,
        "suites": {suite: {r: scores[r]["all"] for r in ROLES}},
        "items": items,
        **extra,
    }


def many(n: int, **kwargs: Any) -> dict[str, Any]:
    """``n`` cases with a mix of outcomes."""
    outcomes = {
        f"case-{k:05d}": {"teacher": k % 5 != 0, "student": k % 3 == 0, "finetuned": k % 4 != 0}
        for k in range(n)
    }
    return report(outcomes, **kwargs)
