"""The HTML report at 10,000 cases: its size, the time to render it, and (with Playwright and
Debian's chromium) the time the page takes to show its first rows, filter and expand a case.

What keeps the page usable at that size: the verdict, tables and charts are rendered into the
page, but cases are not. They travel as two JSON blobs; the page's script renders one page of
100 rows from the small blob (ids, outcomes, scores, search text) and filters over it in
memory, and parses the large blob (prompts, replies, grader reasons) only when a case is first
expanded. Message texts are stored once in a string table, since the few-shot system prompts
repeat on every case.

    python benchmarks/bench_html_report.py [--cases 10000] [--no-browser]
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from pytest_distill.verdict import html

ROLES = ("teacher", "student", "finetuned")
SYSTEM = {
    "teacher": "Reply with this due date as YYYY-MM-DD. " + "3 May 2026 -> 2026-05-03. " * 30,
    "student": "Reply with this due date as YYYY-MM-DD, nothing else.",
    "finetuned": "Reply with this due date as YYYY-MM-DD, nothing else.",
}
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def item(n: int, role: str) -> dict[str, Any]:
    passed = (n * 7 + len(role)) % 5 != 0
    reply = f"2027-{n % 12 + 1:02d}-{n % 28 + 1:02d}" if passed else "I am not sure, but maybe soon"
    return {
        "nodeid": f"evals/due.eval.yaml::due-{n:05d}[{role}]",
        "suite": ("due_dates", "hardware_requests")[n % 2],
        "case_id": f"due-{n:05d}",
        "role": role,
        "split": "holdout" if n % 5 == 0 else "train",
        "passed": passed,
        "score": 1.0 if passed else 0.0,
        "grades": [{"name": "string_check", "score": float(passed), "passed": passed,
                    "reason": "" if passed else f"expected '2027-01-01', got {reply!r}"}],
        "model": f"model-{role}",
        "completion_id": f"chatcmpl-{n}-{role}",
        "reply": reply,
        "prompt_tokens": 300 if role == "teacher" else 40,
        "completion_tokens": 8,
        "latency_s": 0.1,
        "messages": [{"role": "system", "content": SYSTEM[role]},
                     {"role": "user", "content": f"Ticket {n}: needed by the {n % 28 + 1}th"}],
        "reference": f"2027-{n % 12 + 1:02d}-{n % 28 + 1:02d}",
    }  # fmt: skip


def report(cases: int) -> dict[str, Any]:
    items = [item(n, role) for n in range(cases) for role in ROLES]
    agg = {
        "cases": cases, "passed": 0, "pass_rate": 0.8, "mean_score": 0.8, "prompt_tokens": 0,
        "completion_tokens": 0, "latency_p50_s": 0.1, "latency_p95_s": 0.2, "cost_usd": None,
    }  # fmt: skip
    gate = {
        "expression": "finetuned >= 0.95 * teacher", "passed": True, "split": "holdout",
        "reason": "", "missing_roles": [], "clauses": [],
    }  # fmt: skip
    return {
        "schema": "pytest-distill/report/1",
        "created": "2026-12-02T00:00:00+00:00",
        "roles": {r: {"model": f"model-{r}", "endpoint": "local"} for r in ROLES},
        "gate": gate,
        "scores": {r: {"all": agg, "holdout": agg} for r in ROLES},
        "suites": {},
        "items": items,
    }


def in_browser(page_path: Path) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    timings = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page()
        start = time.perf_counter()
        page.goto(page_path.as_uri())
        page.wait_for_selector("#case-rows tr.case")
        timings["load to first rows"] = time.perf_counter() - start
        start = time.perf_counter()
        page.select_option("#f-change", index=2)
        page.wait_for_function("document.getElementById('status').textContent.includes('match')")
        timings["filter by change"] = time.perf_counter() - start
        start = time.perf_counter()
        page.locator("#case-rows tr.case button").first.click()
        page.wait_for_selector("#case-rows tr.detail pre.reply")
        timings["first expand (parses details)"] = time.perf_counter() - start
        start = time.perf_counter()
        page.locator("#case-rows tr.case button").nth(1).click()
        page.wait_for_function("document.querySelectorAll('#case-rows tr.detail').length == 2")
        timings["second expand"] = time.perf_counter() - start
        browser.close()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    data = report(args.cases)
    start = time.perf_counter()
    json_bytes = len(json.dumps(data, indent=2, ensure_ascii=False).encode())
    json_seconds = time.perf_counter() - start
    start = time.perf_counter()
    page = html.render(data)
    seconds = time.perf_counter() - start
    size = len(page.encode())
    blobs = dict(re.findall(r'<script type="application/json" id="([\w-]+)">(.*?)</script>', page))
    print(f"cases: {args.cases:,} ({args.cases * len(ROLES):,} items)")
    # For scale on a busy machine: the JSON report's own serialisation of the same data.
    print(f"JSON report: {json_bytes / 1e6:.1f} MB, json.dumps {json_seconds:.2f} s")
    print(f"HTML render: {seconds:.2f} s; page {size / 1e6:.1f} MB")
    for name, text in blobs.items():
        print(f"  blob {name}: {len(text.encode()) / 1e6:.1f} MB")
    if args.no_browser or not Path("/usr/bin/chromium").exists():
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "report.html"
        path.write_text(page, encoding="utf-8")
        for label, value in in_browser(path).items():
            print(f"chromium, {label}: {value * 1000:.0f} ms")


if __name__ == "__main__":
    main()
