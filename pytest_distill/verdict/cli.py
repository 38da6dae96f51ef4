"""``distill-report REPORT.json --html OUT``: render a saved JSON report, so that CI can keep
the JSON and render it later. Reports of every schema version ``pytest-distill/report/N``
render; fields a version lacks show as missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pytest_distill.verdict import html, job_summary
from pytest_distill.verdict.scrub import scrub
from pytest_distill.verdict.view import ReportError, schema_version


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="distill-report", description="Render a pytest-distill JSON report."
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
    if args.html is None and args.summary is None:
        parser.error("nothing to do: give --html OUT and/or --summary OUT")
    try:
        data = _load(args.report)
    except ReportError as exc:
        print(f"distill-report: {exc}", file=sys.stderr)
        return 2
    if args.html is not None:
        html.write(args.html, data)
        print(f"distill-report: wrote {args.html}")
    if args.summary is not None:
        job_summary.append(args.summary, data, cases=args.summary_cases)
        print(f"distill-report: appended the job summary to {args.summary}")
    return 0


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
