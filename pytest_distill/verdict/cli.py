"""``distill-report REPORT.json``: a saved JSON report's summary (verdict, roles, gate) on the
terminal; with ``--html OUT`` and ``--summary OUT``, its HTML page and CI job summary, so that
CI can keep the JSON and render it later. Reports of every schema version
``pytest-distill/report/N`` render; fields a version lacks show as missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_distill.verdict import html, job_summary, view
from pytest_distill.verdict.scrub import scrub
from pytest_distill.verdict.view import ReportError, schema_version


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="distill-report",
        description="Show a pytest-distill JSON report's summary, or render its HTML page and "
        "CI job summary.",
    )
    parser.add_argument("report", type=Path, help="the JSON report (--distill-report PATH)")
    parser.add_argument("--html", type=Path, metavar="OUT", help="write the HTML report to OUT")
    parser.add_argument(
        "--summary", type=Path, metavar="OUT", help="append the CI job summary (markdown) to OUT"
    )
    parser.add_argument(
        "--summary-cases", action="store_true", help="the summary shows prompts and replies"
    )
    args = parser.parse_args(argv)
    try:
        data = _load(args.report)
    except ReportError as exc:
        print(f"distill-report: {exc}", file=sys.stderr)
        return 2
    if args.html is None and args.summary is None:
        print("\n".join(summary_lines(data)))
        return 0
    if args.html is not None:
        html.write(args.html, data)
        print(f"distill-report: wrote {args.html}")
    if args.summary is not None:
        job_summary.append(args.summary, data, cases=args.summary_cases)
        print(f"distill-report: appended the job summary to {args.summary}")
    return 0


_COLUMNS = ("", "cases", "pass", "score", "prompt tok", "compl tok", "p50 ms", "cost")


def summary_lines(data: Mapping[str, Any]) -> Iterator[str]:
    """The report for a terminal: the verdict, the gate's cases by role, the gate's clauses."""
    verdict = view.verdict(data)
    code = f" (exit code {verdict.exit_code})" if verdict.exit_code is not None else ""
    created = f", {data['created']}" if data.get("created") else ""
    yield f"pytest-distill report ({data.get('schema')}{created})"
    yield f"{_verdict_words(verdict)}{code}"
    split = view.gate_split(data)
    scores = data.get("scores") or {}
    rows = [_row(role, (scores.get(role) or {}).get(split) or {}) for role in view.roles(data)]
    if rows:
        yield f"{split} cases, by role:"
        widths = [max(len(r[i]) for r in (_COLUMNS, *rows)) for i in range(len(_COLUMNS))]
        for row in (_COLUMNS, *rows):
            cells = [row[0].ljust(widths[0])]
            cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
            yield "  " + "  ".join(cells)
    gate = data.get("gate")
    if isinstance(gate, Mapping):
        clauses = [c for c in gate.get("clauses") or () if isinstance(c, Mapping)]
        read = f" on {split} cases" if clauses else ""
        yield f"gate{read}: {gate.get('expression', '')}"
        for clause in clauses:
            mark = "ok  " if clause.get("passed") is True else "FAIL"
            yield f"  {mark} {clause.get('explanation') or clause.get('text', '')}"
    if data.get("distill_error") and verdict.reason != data["distill_error"]:
        yield f"distill step failed: {data['distill_error']}"


def _verdict_words(verdict: view.Verdict) -> str:
    """``Gate failed: finetuned >= ...``, without saying ``gate failed`` twice."""
    reason = verdict.reason
    if not reason:
        return verdict.headline
    if reason.lower().startswith(verdict.headline.lower()):
        return reason[0].upper() + reason[1:]
    return (
        f"{verdict.headline} {reason}"
        if reason.startswith("on ")
        else f"{verdict.headline}: {reason}"
    )


def _row(role: str, agg: Mapping[str, Any]) -> tuple[str, ...]:
    interval = view.interval(agg)
    score = _num(agg.get("mean_score"), "{:.3f}")
    if interval:
        score += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
    p50 = agg.get("latency_p50_s")
    return (
        role,
        str(agg.get("cases", "-")),
        _num(agg.get("pass_rate"), "{:.1%}"),
        score,
        _num(agg.get("prompt_tokens"), "{:,}"),
        _num(agg.get("completion_tokens"), "{:,}"),
        _num(p50 * 1000 if isinstance(p50, (int, float)) else None, "{:.0f}"),
        _num(agg.get("cost_usd"), "${:.4f}"),
    )


def _num(value: Any, fmt: str) -> str:
    return fmt.format(value) if isinstance(value, (int, float)) else "-"


def _load(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReportError(f"{path}: cannot read ({exc.strerror}); give the report's path") from None
    except ValueError as exc:
        raise ReportError(
            f"{path}: not JSON ({exc}); give the file written by --distill-report"
        ) from None
    schema_version(data, str(path))
    key = os.environ.get("OPENAI_API_KEY", "")
    return dict(scrub(data, [key] if key else []))


if __name__ == "__main__":
    raise SystemExit(main())
