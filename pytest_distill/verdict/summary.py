"""The terminal summary: tables per role and suite, then the gate, its verdict and exit code.

Printed after pytest's short test summary, so the verdict is the last thing above pytest's
final line. Each block is a list of :class:`Line`; add lines to a block to extend it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from pytest_distill.records import ItemResult
from pytest_distill.verdict import evidence as paired
from pytest_distill.verdict.gate import DISTILL_FAILED_EXIT_CODE, percentile
from pytest_distill.verdict.report import Outcome, Run
from pytest_distill.verdict.results import Aggregate, aggregate, group_by_suite
from pytest_distill.verdict.view import Verdict

BELOW = "below passing"  # the outcome of a case graded below passing while a gate is configured
BELOW_LETTER = "b"
MIN_GATE_CASES = 50  # fewer holdout cases than this make a gate on them noisy

_COLUMNS = (
    "",
    "cases",
    "errors",
    "pass",
    "score",
    "prompt tok",
    "compl tok",
    "rt p50 ms",
    "rt p95 ms",
    "cost",
)


@dataclass(frozen=True, slots=True)
class Line:
    text: str
    markup: dict[str, bool] = field(default_factory=dict)


def summary(tr: pytest.TerminalReporter, run: Run, outcome: Outcome, verdict: Verdict) -> None:
    if run.deferred:
        tr.write_line(f"distill: {run.deferred}", yellow=True, bold=True)
    if not run.results.items and outcome.gate is None:
        if run.distill_error:
            tr.write_line(f"{run.distill_error} (exit code {verdict.exit_code})", red=True)
        return
    tr.write_sep("=", "distill summary")
    shown = (
        *tables(run),
        *stage_lines(run),
        *pair_lines(run, outcome),
        *gate_lines(run, outcome, verdict),
    )
    for line in shown:
        tr.write_line(line.text, **line.markup)


def below_passing(tr: pytest.TerminalReporter) -> None:
    """``-r b``: one line per case graded below passing, with its first failing grade."""
    reports = tr.getreports(BELOW)
    if "b" not in tr.reportchars or not reports:
        return
    tr.write_sep("=", "below passing (measurements, not failures)")
    for rep in reports:
        lines = str(rep.longrepr).splitlines() if rep.longrepr else []
        # The first failing grade says why; the failure's first line may only locate the case.
        reason = next(
            (line for line in lines if line.startswith("FAIL")), lines[0] if lines else ""
        )
        tr.write_line(f"BELOW PASSING {rep.nodeid} - {reason}")


TOOLS_COLUMN = "tool calls"
"""Tool-call accuracy: the mean score of the tool_calls graders, shown when a case has one."""


def tables(run: Run) -> Iterator[Line]:
    results, prices = run.results, run.settings.prices
    if not results.items:
        return
    roles = results.roles()
    tools = any(r.tool_score is not None for r in results.items)

    def _row(label: str, agg: Aggregate) -> tuple[str, ...]:
        row = _cells(label, agg)
        if not tools:
            return row
        shown = f"{agg.tool_score:.3f}" if agg.tool_score is not None else "-"
        return (*row[:5], shown, *row[5:])

    yield from _table(
        "all cases, by role", [_row(r, aggregate(results.select(role=r), prices)) for r in roles]
    )
    holdout = results.has_holdout()
    if holdout:
        rows = [_row(r, aggregate(results.select(role=r, split="holdout"), prices)) for r in roles]
        yield from _table("holdout (the gate's cases)", rows)
    by_suite = group_by_suite(results.items)
    if len(by_suite) > 1:
        rows = [
            _row(f"{suite} {role}", aggregate(chosen, prices))
            for suite, items in by_suite.items()
            for role in roles
            if (
                chosen := [
                    r for r in items if r.role == role and (not holdout or r.split == "holdout")
                ]
            )
        ]
        yield from _table("by suite, holdout cases" if holdout else "by suite", rows)
    yield _latency_legend(results.items, roles)


def _latency_legend(items: Sequence[ItemResult], roles: Sequence[str]) -> Line:
    """What the latency columns measure, and the endpoints' own time where they sent it."""
    text = "rt ms: a call's round trip, time waiting in the endpoint's queue included"
    own = {
        role: [i.call.server_s for i in items if i.role == role and i.call and i.call.server_s]
        for role in roles
    }
    known = [f"{role} {percentile(v, 50) * 1000:.0f} ms" for role, v in own.items() if v]
    if known:
        text += f"; the endpoint's processing time (openai-processing-ms), p50: {', '.join(known)}"
    return Line(text)


def _cells(label: str, agg: Aggregate) -> tuple[str, ...]:
    lat = agg.latencies
    return (
        label,
        str(agg.n),
        str(agg.errors),
        f"{agg.pass_rate:.1%}" if agg.pass_rate is not None else "-",
        f"{agg.score:.3f}" if agg.score is not None else "-",
        f"{agg.prompt_tokens:,}",
        f"{agg.completion_tokens:,}",
        f"{percentile(lat, 50) * 1000:.0f}" if lat else "-",
        f"{percentile(lat, 95) * 1000:.0f}" if lat else "-",
        f"${agg.cost:.4f}" if agg.cost is not None else "-",
    )


def _table(title: str, rows: Sequence[Sequence[str]]) -> Iterator[Line]:
    columns: tuple[str, ...] = _COLUMNS
    if rows and len(rows[0]) > len(_COLUMNS):
        columns = (*_COLUMNS[:5], TOOLS_COLUMN, *_COLUMNS[5:])
    widths = [max(len(r[i]) for r in (columns, *rows)) for i in range(len(columns))]
    yield Line(f"{title}:")
    for row in (columns, *rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        yield Line("  " + "  ".join(cells))


def stage_lines(run: Run) -> Iterator[Line]:
    """A method past SFT (``distill_method``): which ran, and each stage's file, job and model."""
    training = run.training or {}
    stages = training.get("stages")
    if not stages:
        return
    yield Line(f"distill method {training.get('method')}:")
    for number, stage in enumerate(stages, start=1):
        sha = str(stage.get("sha256") or "")[:12]
        yield Line(
            f"  stage {number} {stage.get('stage')}: {stage.get('examples')} lines "
            f"(sha256 {sha}), job {stage.get('job_id')} ({stage.get('status')}) from "
            f"{stage.get('base_model')} -> {stage.get('fine_tuned_model') or 'no model yet'}"
        )


def pair_lines(run: Run, outcome: Outcome) -> Iterator[Line]:
    """Paired differences between roles on the same cases, and cases left out for leakage."""
    if outcome.evidence is not None:
        for text in paired.summary_lines(outcome.evidence, run.gate):
            yield Line(text)


def gate_lines(run: Run, outcome: Outcome, verdict: Verdict) -> Iterator[Line]:
    gate = outcome.gate
    if gate is not None:
        # A gate that read no cases (skipped, or not evaluated) names no split it was on
        read = f" on {outcome.gate_split} cases" if gate.clauses else ""
        yield Line(f"gate{read}: {gate.expression}")
        for clause in gate.clauses:
            yield Line(f"  {'ok  ' if clause.passed else 'FAIL'} {clause.explanation}")
        if gate.status in ("passed", "failed"):
            if outcome.evidence is not None:  # what the holdout can detect
                for text in paired.power_lines(outcome.evidence, run.gate):
                    yield Line(text)
            yield from few_cases(run, outcome)
    if gate is not None and verdict.exit_code == DISTILL_FAILED_EXIT_CODE:
        yield Line(gate.reason, {"yellow": True})
    elif run.distill_error and verdict.exit_code != DISTILL_FAILED_EXIT_CODE:
        yield Line(run.distill_error, {"red": True})
    yield verdict_line(run, outcome, verdict)


def few_cases(run: Run, outcome: Outcome) -> Iterator[Line]:
    """A gate on fewer than 50 cases per role says so, and what it would take."""
    assert run.gate is not None
    roles = run.gate.role_names
    split = None if outcome.gate_split == "all" else outcome.gate_split
    counts = {role: len(run.results.select(role=role, split=split)) for role in sorted(roles)}
    few = {role: n for role, n in counts.items() if n < MIN_GATE_CASES}
    if not few:
        return
    listed = ", ".join(f"{n} {role}" for role, n in few.items())
    holdout = run.settings.holdout
    if split is None or holdout <= 0:
        need = f"{MIN_GATE_CASES} cases per role"
    else:
        total = math.ceil(MIN_GATE_CASES / holdout)
        need = f"about {total} cases in all at distill_holdout = {holdout:g}"
    yield Line(
        f"note: the gate reads {listed} {outcome.gate_split} cases, fewer than "
        f"{MIN_GATE_CASES}: small differences are noise; {MIN_GATE_CASES} per role take {need}",
        {"yellow": True},
    )


def verdict_line(run: Run, outcome: Outcome, verdict: Verdict) -> Line:
    """The last line: the gate's verdict and the exit code the process returns."""
    code = verdict.exit_code
    gate = outcome.gate
    failures = (
        f"; {verdict.other_failures} failed or errored item(s) or test(s)"
        if verdict.other_failures
        else ""
    )
    if code == DISTILL_FAILED_EXIT_CODE:
        text = f"{run.distill_error or 'the distill step failed'} (exit code {code})"
        return Line(text, {"red": True, "bold": True})
    if gate is None:
        return Line(
            f"no gate configured (exit code {code}{failures})",
            {"green": code == 0, "red": code != 0},
        )
    if gate.status == "failed":
        return Line(f"{gate.reason} (exit code {code})", {"red": True, "bold": True})
    if gate.status == "not evaluated" and run.deferred:
        return Line(f"{gate.reason} (exit code {code}{failures})", {"yellow": True, "bold": True})
    if gate.status == "not evaluated":
        return Line(
            f"{gate.reason}; the gate fails closed (exit code {code})", {"red": True, "bold": True}
        )
    if gate.status == "skipped":
        return Line(
            f"{gate.reason}; the items decide (exit code {code}{failures})", {"yellow": True}
        )
    text = f"gate passed on {outcome.gate_split} cases (exit code {code}{failures})"
    return Line(text, {"green": code == 0, "red": code != 0, "bold": True})
