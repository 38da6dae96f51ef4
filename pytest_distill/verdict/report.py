"""The terminal summary, the JSON report and the gate verdict at the end of a session.

The JSON report's schema is ``pytest-distill/report/2``, documented in ``docs/report.md``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_distill import __version__
from pytest_distill.atomic import write_atomic
from pytest_distill.options import Settings
from pytest_distill.verdict import evidence as paired
from pytest_distill.verdict import job_summary
from pytest_distill.verdict.gate import (
    DISTILL_FAILED_EXIT_CODE,
    GATE_FAILED_EXIT_CODE,
    Gate,
    GateResult,
    RoleStats,
    percentile,
)
from pytest_distill.verdict.results import Aggregate, ItemResult, Results, aggregate, group_by_suite
from pytest_distill.verdict.scrub import scrub

SCHEMA = "pytest-distill/report/2"


@dataclass(frozen=True, slots=True)
class Outcome:
    gate: GateResult | None
    gate_split: str
    report_path: Path | None
    evidence: paired.Evidence | None = None  # the gate's cases, pairs and exclusions


@dataclass(frozen=True, slots=True)
class Run:
    """What the verdict is made from: the settings, every item's result, a distill failure."""

    settings: Settings
    results: Results
    distill_error: str | None = None
    training: Mapping[str, Any] | None = None  # the distill step's lineage


def header(settings: Settings) -> str | None:
    configured = [
        f"{name}={cfg.model}@{cfg.endpoint}"
        for name, cfg in settings.role_configs.items()
        if cfg.model
    ]
    if not configured:
        return None
    return f"distill: {', '.join(configured)}; holdout {settings.holdout:g}"


def gate_split(run: Run) -> str:
    return "holdout" if run.results.has_holdout() else "all"


def _stats(agg: Aggregate) -> RoleStats:
    calls = max(agg.calls, 1)
    return RoleStats(
        n=agg.n,
        score=agg.score,
        pass_rate=agg.pass_rate,
        prompt_tokens=agg.prompt_tokens / calls,
        completion_tokens=agg.completion_tokens / calls,
        latency_p50=percentile(agg.latencies, 50) if agg.latencies else 0.0,
        latency_p95=percentile(agg.latencies, 95) if agg.latencies else 0.0,
        cost=agg.cost,
        pass_k=agg.pass_k,
        pass_at_k=agg.pass_at_k,
    )


def finish(run: Run) -> Outcome:
    settings = run.settings
    split = gate_split(run)
    found = gather(run, split)
    gate = Gate.parse(settings.gate) if settings.gate else None
    stats = found.role_stats(lambda items: _stats(aggregate(items, settings.prices)))
    result = gate.evaluate(stats, found.pair) if gate else None
    outcome = Outcome(result, split, settings.report_path, found)
    # Only a run with eval items summarises: `pytest -k other` in a gated project stays quiet.
    summary_path = job_summary.target() if run.results.items else None
    if settings.report_path is None and settings.html_path is None and summary_path is None:
        return outcome
    data = scrub(to_json(run, outcome), secrets(settings))
    if settings.report_path is not None:
        write_json(settings.report_path, data)
    if settings.html_path is not None:
        from pytest_distill.verdict import html

        html.write(settings.html_path, data, scrubbed=True)
    if summary_path is not None:
        job_summary.append(summary_path, data, cases=settings.summary_cases)
    return outcome


def secrets(settings: Settings) -> list[str]:
    """The API keys this session could hold, so that no output repeats one."""
    names = {"OPENAI_API_KEY"} | {
        c.api_key_env for c in settings.role_configs.values() if c.api_key_env
    }
    return [os.environ[name] for name in sorted(names) if os.environ.get(name)]


def gather(run: Run, split: str) -> paired.Evidence:
    """The gate's split, less the cases a fine-tuned model trained on (verdict/leakage.py)."""
    settings = run.settings
    return paired.Evidence.gather(
        run.results.select(split=None if split == "all" else split),
        confidence=settings.confidence,
        rootpath=settings.rootpath,
        finetuned_model=getattr(settings.role_configs.get("finetuned"), "model", None),
        repeats=settings.repeats,
    )


def exit_status(
    outcome: Outcome,
    status: int,
    *,
    other_failures: int,
    distill_failed: bool = False,
    deferred: bool = False,
) -> int:
    """With an evaluated gate, the gate decides: cases that grade below passing are
    measurements, not failures. Errors and failing ordinary tests still fail the session.
    A failed distill step (exit code 7) outranks the gate. ``deferred``: --distill-no-wait
    started (or found) a job, so the gate waits for the next run; below-passing grades alone
    do not fail this one."""
    if distill_failed and status in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        return DISTILL_FAILED_EXIT_CODE
    if deferred and status in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        return status if other_failures else int(pytest.ExitCode.OK)
    gate = outcome.gate
    if gate is None or gate.passed is None:
        return status
    if status not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        return status
    if status == pytest.ExitCode.TESTS_FAILED and other_failures:
        return status
    return GATE_FAILED_EXIT_CODE if not gate.passed else int(pytest.ExitCode.OK)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode())


def to_json(run: Run, outcome: Outcome) -> dict[str, Any]:
    results, prices = run.results, run.settings.prices
    return {
        "schema": SCHEMA,
        "pytest_distill": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "roles": {
            name: {"model": cfg.model, "endpoint": str(cfg.endpoint)}
            for name, cfg in run.settings.role_configs.items()
            if cfg.model
        },
        "holdout": run.settings.holdout,
        "gate": _gate_json(outcome),
        "paired": paired.to_json(outcome.evidence, _gate(run)) if outcome.evidence else None,
        "scores": {
            role: {
                split: _agg_json(aggregate(results.select(role=role, split=sel), prices))
                for split, sel in (("all", None), ("train", "train"), ("holdout", "holdout"))
            }
            for role in results.roles()
        },
        "suites": {
            suite: {
                role: _agg_json(aggregate([r for r in items if r.role == role], prices))
                for role in sorted({r.role for r in items})
            }
            for suite, items in group_by_suite(results.items).items()
        },
        "items": [_item_json(r) for r in results.items],
        "training": dict(run.training) if run.training is not None else None,
        "distill_error": run.distill_error,
    }


def _gate(run: Run) -> Gate | None:
    return Gate.parse(run.settings.gate) if run.settings.gate else None


def _gate_json(outcome: Outcome) -> dict[str, Any] | None:
    gate = outcome.gate
    if gate is None:
        return None
    return {
        "expression": gate.expression,
        "passed": gate.passed,
        "split": outcome.gate_split,
        "reason": gate.reason,
        "missing_roles": list(gate.missing_roles),
        "clauses": [
            {"text": c.text, "passed": c.passed, "explanation": c.explanation} for c in gate.clauses
        ],
    }


def _agg_json(agg: Aggregate) -> dict[str, Any]:
    return {
        "cases": agg.n,
        "passed": agg.passed,
        "pass_rate": round(agg.pass_rate, 6),
        "mean_score": round(agg.score, 6),
        "prompt_tokens": agg.prompt_tokens,
        "completion_tokens": agg.completion_tokens,
        "latency_p50_s": round(percentile(agg.latencies, 50), 4) if agg.latencies else None,
        "latency_p95_s": round(percentile(agg.latencies, 95), 4) if agg.latencies else None,
        "cost_usd": agg.cost,
    }


def _item_json(result: ItemResult) -> dict[str, Any]:
    call = result.call
    return {
        "nodeid": result.nodeid,
        "suite": result.suite,
        "case_id": result.case_id,
        "location": result.location,
        "role": result.role,
        "split": result.split,
        "passed": result.passed,
        "score": round(result.score, 6),
        "grades": [
            {"name": g.name, "score": round(g.score, 6), "passed": g.passed, "reason": g.reason}
            for g in result.grades
        ],
        "model": call.model if call else None,
        "completion_id": call.completion_id if call else None,
        "reply": call.reply if call else None,
        "messages": list(call.messages) if call else None,
        "reference": result.reference,
        "prompt_tokens": call.prompt_tokens if call else 0,
        "completion_tokens": call.completion_tokens if call else 0,
        "latency_s": round(call.latency_s, 4) if call else None,
        "attempts": [paired.attempt_json(a) for a in result.attempts],
    }


# --- terminal ----------------------------------------------------------------------------------

_COLUMNS = ("", "cases", "pass", "score", "prompt tok", "compl tok", "p50 ms", "p95 ms", "cost")


def summary(tr: pytest.TerminalReporter, run: Run, outcome: Outcome) -> None:
    results, prices = run.results, run.settings.prices
    if not results.items:
        if run.distill_error:
            tr.write_line(run.distill_error, red=True)
        return
    tr.write_sep("=", "distill summary")
    rows = [_row(role, aggregate(results.select(role=role), prices)) for role in results.roles()]
    _table(tr, "all cases, by role", rows)
    if results.has_holdout():
        rows = [
            _row(role, aggregate(results.select(role=role, split="holdout"), prices))
            for role in results.roles()
        ]
        _table(tr, "holdout (the gate's cases)", rows)
    by_suite = group_by_suite(results.items)
    if len(by_suite) > 1:
        rows = [
            _row(f"{suite} {role}", aggregate([r for r in items if r.role == role], prices))
            for suite, items in by_suite.items()
            for role in results.roles()
            if any(r.role == role for r in items)
        ]
        _table(tr, "by suite", rows)
    if outcome.evidence is not None:
        for line in paired.summary_lines(outcome.evidence, _gate(run)):
            tr.write_line(line)
    power = paired.power_lines(outcome.evidence, _gate(run)) if outcome.evidence else []
    _gate_lines(tr, outcome, power)
    if run.distill_error:
        tr.write_line(f"{run.distill_error} (exit code {DISTILL_FAILED_EXIT_CODE})", red=True)


def _row(label: str, agg: Aggregate) -> tuple[str, ...]:
    lat = agg.latencies
    return (
        label,
        str(agg.n),
        f"{agg.pass_rate:.1%}",
        f"{agg.score:.3f}",
        f"{agg.prompt_tokens:,}",
        f"{agg.completion_tokens:,}",
        f"{percentile(lat, 50) * 1000:.0f}" if lat else "-",
        f"{percentile(lat, 95) * 1000:.0f}" if lat else "-",
        f"${agg.cost:.4f}" if agg.cost is not None else "-",
    )


def _table(tr: pytest.TerminalReporter, title: str, rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in (_COLUMNS, *rows)) for i in range(len(_COLUMNS))]
    tr.write_line(f"{title}:")
    for row in (_COLUMNS, *rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        tr.write_line("  " + "  ".join(cells))


def _gate_lines(tr: pytest.TerminalReporter, outcome: Outcome, power: Sequence[str] = ()) -> None:
    gate = outcome.gate
    if gate is None:
        return
    for clause in gate.clauses:
        tr.write_line(f"  {'ok  ' if clause.passed else 'FAIL'} {clause.explanation}")
    for line in power if gate.passed is not None else ():
        tr.write_line(line)  # what the holdout can detect, under the clauses it is about
    if gate.passed is None:
        tr.write_line(f"gate not evaluated: {gate.reason}", yellow=True)
    elif gate.passed:
        tr.write_line(f"gate passed on {outcome.gate_split} cases: {gate.expression}", green=True)
    else:
        tr.write_line(f"{gate.reason} (exit code {GATE_FAILED_EXIT_CODE})", red=True, bold=True)
