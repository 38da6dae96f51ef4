"""The gate verdict, the exit code and the JSON report at the end of a session.

The JSON report's schema is ``pytest-distill/report/2``, documented in ``docs/report.md``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from pytest_distill.atomic import write_atomic
from pytest_distill.options import Settings
from pytest_distill.records import ItemResult
from pytest_distill.verdict import evidence as paired
from pytest_distill.verdict import job_summary, view
from pytest_distill.verdict.gate import (
    DISTILL_FAILED_EXIT_CODE,
    GATE_FAILED_EXIT_CODE,
    Gate,
    GateResult,
    RoleStats,
    percentile,
)
from pytest_distill.verdict.results import Aggregate, Results, aggregate, group_by_suite
from pytest_distill.verdict.scrub import scrub
from pytest_distill.version import __version__

SCHEMA = "pytest-distill/report/2"
NO_TESTS: Final = pytest.ExitCode.NO_TESTS_COLLECTED


@dataclass(frozen=True, slots=True)
class Outcome:
    gate: GateResult | None
    gate_split: str
    report_path: Path | None
    evidence: paired.Evidence | None = None  # the gate's cases, pairs and exclusions


@dataclass(frozen=True, slots=True)
class Run:
    """What the verdict is made from: the settings, every item's result, a distill failure, and
    the gate parsed once (from ``settings.gate`` unless given: the session parses it at
    start-up)."""

    settings: Settings
    results: Results
    distill_error: str | None = None
    training: Mapping[str, Any] | None = None  # the distill step's lineage
    gate: Gate | None = None
    collection_errors: int = 0  # errors that stopped the session before any item ran
    stopped_early: bool = False  # -x or --maxfail ended the session before every item ran
    # --distill-no-wait left batches running: which, and the command that collects them. Their
    # items were skipped, so the gate is not evaluated on what is left.
    deferred: str | None = None

    def __post_init__(self) -> None:
        if self.gate is None and self.settings.gate:
            object.__setattr__(self, "gate", Gate.parse(self.settings.gate))


def header(settings: Settings) -> str | None:
    """The session header's lines: each role's model, endpoint and sampling parameters."""
    roles = role_settings(settings)
    if not roles:
        return None
    width = max(len(name) for name in roles)
    lines = [f"distill: holdout {settings.holdout:g}; roles (model @ endpoint: parameters):"]
    for name, role in roles.items():
        params = format_params(role["params"]) or "none (the endpoint's defaults)"
        lines.append(f"  {name:<{width}}  {role['model']} @ {role['endpoint']}: {params}")
    text: str = scrub("\n".join(lines), secrets(settings))
    return text


def role_settings(settings: Settings) -> dict[str, dict[str, Any]]:
    """Each role with a model as it is called: model, endpoint (never a key) and the sampling
    parameters of its configuration (a suite's ``params`` go over these for its cases)."""
    return {
        name: {"model": cfg.model, "endpoint": str(cfg.endpoint), "params": dict(cfg.params)}
        for name, cfg in settings.role_configs.items()
        if cfg.model
    }


def format_params(params: Mapping[str, Any]) -> str:
    """``temperature=0 max_tokens=64 stop=["END"]``: the ini's own spelling, values as JSON."""
    return " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in params.items())


def _stats(agg: Aggregate) -> RoleStats:
    calls = max(agg.calls, 1)
    return RoleStats(
        n=agg.n,
        score=agg.score if agg.score is not None else 0.0,  # errors > 0: never evaluated
        pass_rate=agg.pass_rate if agg.pass_rate is not None else 0.0,
        prompt_tokens=agg.prompt_tokens / calls,
        completion_tokens=agg.completion_tokens / calls,
        latency_p50=percentile(agg.latencies, 50) if agg.latencies else 0.0,
        latency_p95=percentile(agg.latencies, 95) if agg.latencies else 0.0,
        cost=agg.cost,
        pass_k=agg.pass_k,
        pass_at_k=agg.pass_at_k,
        errors=agg.errors,
    )


def finish(run: Run) -> Outcome:
    """Evaluate the gate, if one is configured. Not evaluated means it fails closed, except
    when a role it names has no model yet (a project before its first ``--distill``). After a
    collection error that stopped the session it is not evaluated, whatever its roles."""
    split = view.gate_split(r.split for r in run.results.items)
    found = gather(run, split)
    result = _evaluate(run, run.gate, found) if run.gate is not None else None
    if run.gate is not None and run.collection_errors:
        n = run.collection_errors
        reason = f"gate not evaluated: collection failed ({n} error{'s' * (n != 1)}), no item ran"
        result = GateResult(run.gate.expression, None, (), (), reason)
    elif run.gate is not None and run.deferred:
        reason = (
            "gate not evaluated: batches are still running (--distill-no-wait); the run that "
            "collects them evaluates it"
        )
        result = GateResult(run.gate.expression, None, (), (), reason)
    return Outcome(result, split, run.settings.report_path, found)


def verdict(run: Run, outcome: Outcome, exit_code: int, other_failures: int) -> view.Verdict:
    """The session's verdict, read from what the report records."""
    data = {"gate": _gate_json(outcome), "exit_code": exit_code}
    return view.verdict({**data, "distill_error": run.distill_error}, other_failures)


def _evaluate(run: Run, gate: Gate, found: paired.Evidence) -> GateResult:
    configs = run.settings.role_configs
    modelless = sorted(r for r in gate.role_names if r not in configs or not configs[r].model)
    if modelless:
        if "sft" in modelless:
            hint = "a two-stage --distill-method (sft+dpo or sft+rl) trains it"
        elif modelless == ["finetuned"]:
            hint = "run `pytest --distill` to train it"
        else:
            hint = f"set ini distill_{modelless[0]}_model"
        reason = f"gate skipped: {', '.join(modelless)} has no model yet ({hint})"
        return GateResult(gate.expression, None, (), tuple(modelless), reason, skipped=True)
    prices = run.settings.prices
    result = gate.evaluate(
        found.role_stats(lambda items: _stats(aggregate(items, prices))), found.pair
    )
    if result.missing_roles:
        why = _why_missing(run, result.missing_roles)
        return dataclasses.replace(result, reason=f"{result.reason} ({why})")
    return result


def _why_missing(run: Run, labels: Sequence[str]) -> str:
    """One cause per missing label, labels that share a cause named together, a suite label
    folded into its role's when the role is missing for the same reason."""
    causes = {label: _cause(run, label) for label in labels}
    grouped: dict[str, list[str]] = {}
    for label, cause in causes.items():
        role, suite = paired.parse_label(label)
        if suite is not None and causes.get(role) == cause:
            continue  # said once, for the role
        grouped.setdefault(cause, []).append(label)
    return "; ".join(f"{', '.join(names)}: {cause}" for cause, names in grouped.items())


def _cause(run: Run, label: str) -> str:
    role, suite = paired.parse_label(label)
    stopped = "the session stopped early (-x or maxfail)"
    if run.distill_error and role in ("finetuned", "sft"):
        return f"not run, {stopped}" if run.stopped_early else "the distill step failed"
    if role not in run.settings.roles and role != "sft":
        return "not selected by --distill-roles / ini distill_roles"
    if run.stopped_early:
        return f"not run, {stopped}"
    ran = any(r.role == role for r in run.results.items)
    if suite is not None and ran:
        return "no results in this suite (its items were deselected by -k, -m or node ids)"
    return "none of its items ran (deselected by -k, -m or node ids, or not collected)"


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
    """The session's exit code; the README's exit-code table says the same.

    pytest's interrupted (2), internal error (3) and usage error (4) stand. Then a failed
    distill step (7), then a gate that failed or was not evaluated (6: it fails closed), then
    failing tests (1). With a gate that passed or was skipped, cases graded below passing are
    measurements, not failures; errored items and failing ordinary tests still count.
    ``deferred``: --distill-no-wait started (or found) a job, so the gate waits for the next
    run; below-passing grades alone do not fail this one.
    """
    if status not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED, NO_TESTS):
        return status
    if distill_failed:
        return DISTILL_FAILED_EXIT_CODE
    if deferred and status in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        return status if other_failures else int(pytest.ExitCode.OK)
    gate = outcome.gate
    if gate is None:
        return status
    if not gate.skipped and gate.passed is not True:
        return GATE_FAILED_EXIT_CODE
    if other_failures:
        return int(pytest.ExitCode.TESTS_FAILED)
    return int(NO_TESTS) if status == NO_TESTS else int(pytest.ExitCode.OK)


def write_report(run: Run, outcome: Outcome, exit_code: int) -> None:
    """The JSON report, the HTML page and the CI job summary, from the same scrubbed data."""
    settings = run.settings
    # Only a run with eval items summarises: `pytest -k other` in a gated project stays quiet.
    summary_path = job_summary.target() if run.results.items else None
    if settings.report_path is None and settings.html_path is None and summary_path is None:
        return
    data = scrub(to_json(run, outcome, exit_code), secrets(settings))
    if settings.report_path is not None:
        write_json(settings.report_path, data)
    if settings.html_path is not None:
        from pytest_distill.verdict import html

        html.write(settings.html_path, data, scrubbed=True)
    if summary_path is not None:
        job_summary.append(summary_path, data, cases=settings.summary_cases)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode())


def to_json(run: Run, outcome: Outcome, exit_code: int | None = None) -> dict[str, Any]:
    results, prices = run.results, run.settings.prices
    return {
        "schema": SCHEMA,
        "pytest_distill": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "roles": role_settings(run.settings),
        "holdout": run.settings.holdout,
        "exit_code": exit_code,
        "gate": _gate_json(outcome),
        "paired": paired.to_json(outcome.evidence, run.gate) if outcome.evidence else None,
        "scores": {
            role: _splits_json(results.select(role=role), prices) for role in results.roles()
        },
        "suites": {
            suite: {
                role: _splits_json([r for r in items if r.role == role], prices)
                for role in results.roles()
                if any(r.role == role for r in items)
            }
            for suite, items in group_by_suite(results.items).items()
        },
        "items": [_item_json(r) for r in results.items],
        "training": dict(run.training) if run.training is not None else None,
        "distill_error": run.distill_error,
        "deferred": run.deferred,
    }


def _splits_json(results: Sequence[ItemResult], prices: Mapping[str, Any]) -> dict[str, Any]:
    return {
        split: _agg_json(aggregate([r for r in results if sel in (None, r.split)], prices))
        for split, sel in (("all", None), ("train", "train"), ("holdout", "holdout"))
    }


def _gate_json(outcome: Outcome) -> dict[str, Any] | None:
    gate = outcome.gate
    if gate is None:
        return None
    return {
        "expression": gate.expression,
        "passed": gate.passed,
        "status": gate.status,
        "split": outcome.gate_split,
        "reason": gate.reason,
        "missing_roles": list(gate.missing_roles),
        "clauses": [
            {"text": c.text, "passed": c.passed, "explanation": c.explanation} for c in gate.clauses
        ],
    }


def _agg_json(agg: Aggregate) -> dict[str, Any]:
    tools = {} if agg.tool_score is None else {"tool_call_accuracy": round(agg.tool_score, 6)}
    return {
        "cases": agg.n,
        "errors": agg.errors,
        "passed": agg.passed,
        "pass_rate": _rounded(agg.pass_rate, 6),
        "mean_score": _rounded(agg.score, 6),
        "prompt_tokens": agg.prompt_tokens,
        "completion_tokens": agg.completion_tokens,
        "latency_p50_s": round(percentile(agg.latencies, 50), 4) if agg.latencies else None,
        "latency_p95_s": round(percentile(agg.latencies, 95), 4) if agg.latencies else None,
        "cost_usd": agg.cost,
        **tools,
    }


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


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
        "error": result.error,
        "score": None if result.error else round(result.score, 6),
        "grades": [
            {"name": g.name, "score": round(g.score, 6), "passed": g.passed, "reason": g.reason}
            for g in result.grades
        ],
        "model": call.model if call else None,
        "completion_id": call.completion_id if call else None,
        "reply": call.reply if call else None,
        "tool_calls": [c.to_json() for c in call.tool_calls] if call else [],
        "messages": list(call.messages) if call else None,
        "reference": result.reference,
        "prompt_tokens": call.prompt_tokens if call else 0,
        "completion_tokens": call.completion_tokens if call else 0,
        "latency_s": round(call.latency_s, 4) if call else None,
        "attempts": [paired.attempt_json(a) for a in result.attempts],
    }
