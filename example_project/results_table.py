"""Turn a run's JSON report into the README's results table.

    pytest --distill --distill-record-mode=all --distill-report=report.json 2>&1 | tee run.log
    python results_table.py report.json --log run.log --update README.md --update ../README.md

Prints the Markdown table (one row per role, holdout cases only: the cases the gate judges),
or with ``--update`` (once per file) replaces the part of each file between the
``results:start`` and ``results:end`` markers. ``--log`` adds the session's wall time from
pytest's last line.
Every number comes from the report (schema ``pytest-distill/report/2``); none is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

START, END = "<!-- results:start -->", "<!-- results:end -->"
ROLES = ("teacher", "student", "finetuned")
SCHEMA = "pytest-distill/report/2"


def holdout_items(report: Mapping[str, Any], role: str, suite: str | None = None) -> list[Any]:
    return [
        i
        for i in report["items"]
        if i["role"] == role and i["split"] == "holdout" and suite in (None, i["suite"])
    ]


def pct(passed: int, cases: int) -> str:
    return f"{passed / cases:.0%} ({passed}/{cases})" if cases else "-"


def role_row(report: Mapping[str, Any], role: str, suites: list[str]) -> str:
    scores = report["scores"][role]["holdout"]
    cases = scores["cases"]
    per_suite = []
    for suite in suites:
        items = holdout_items(report, role, suite)
        per_suite.append(pct(sum(i["passed"] for i in items), len(items)))
    latency = scores["latency_p50_s"]
    cells = [
        f"**{role}**",
        f"`{report['items_model'][role]}`",
        f"**{scores['mean_score']:.3f}**",
        pct(scores["passed"], cases),
        *per_suite,
        f"{scores['prompt_tokens'] / cases:.0f}" if cases else "-",
        f"{latency * 1000:.0f} ms" if latency is not None else "-",
    ]
    return "| " + " | ".join(cells) + " |"


def models_by_role(report: Mapping[str, Any]) -> dict[str, str]:
    """The model each role ran (the fine-tuned id is only in the items)."""
    found = {role: cfg["model"] for role, cfg in report.get("roles", {}).items()}
    for item in report["items"]:
        if item.get("model"):
            found[item["role"]] = item["model"]
    return found


def wall_time(log: Path) -> str | None:
    """pytest's last line ends with ``in 512.34s (0:08:32)``."""
    found = re.findall(r" in (\d+\.\d+)s(?: \((\d+:\d\d:\d\d)\))?", log.read_text(errors="replace"))
    if not found:
        return None
    seconds, clock = found[-1]
    return f"{float(seconds):.0f} s" + (f" ({clock})" if clock else "")


def table(report: Mapping[str, Any], log: Path | None = None) -> Iterator[str]:
    if report.get("schema") != SCHEMA:
        raise SystemExit(f"not a {SCHEMA} report (schema {report.get('schema')!r})")
    report = {**report, "items_model": models_by_role(report)}
    roles = [r for r in ROLES if report["scores"].get(r, {}).get("holdout", {}).get("cases")]
    suites = sorted({i["suite"] for i in report["items"]})
    columns = [
        "role",
        "model",
        "holdout score",
        "passed",
        *suites,
        "prompt tokens / call",
        "latency p50",
    ]
    yield "| " + " | ".join(columns) + " |"
    yield "|" + "---|" * (len(columns))
    yield from (role_row(report, role, suites) for role in roles)
    yield ""
    gate = report.get("gate")
    if gate:
        verdict = {True: "passed", False: "FAILED", None: "not evaluated"}[gate["passed"]]
        yield f"Gate ({gate['split']} cases): `{gate['expression']}` - **{verdict}**"
        yield ""
        yield from (f"- `{c['explanation']}`" for c in gate["clauses"])
        yield ""
    run = f"Measured by a run on {report['created']}"
    wall = wall_time(log) if log else None
    yield run + (f"; `pytest --distill` took {wall} in all." if wall else ".")


def update(path: Path, lines: list[str]) -> None:
    text = path.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"{path}: add the markers {START} and {END} where the table goes")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    # Written next to it, then renamed over it: an interrupted update leaves the old file whole.
    partial = path.with_name(path.name + ".partial")
    partial.write_text(head + START + "\n" + "\n".join(lines) + "\n" + END + tail, encoding="utf-8")
    partial.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("report", type=Path, help="the file --distill-report wrote")
    parser.add_argument("--log", type=Path, help="the run's terminal output, for its wall time")
    parser.add_argument(
        "--update", type=Path, action="append", metavar="MARKDOWN", help="rewrite its marked part"
    )
    args = parser.parse_args(argv)
    lines = list(table(json.loads(args.report.read_text(encoding="utf-8")), args.log))
    for markdown in args.update or ():
        update(markdown, lines)
    if not args.update:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
