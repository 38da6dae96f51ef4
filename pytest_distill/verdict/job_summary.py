"""The CI job summary: markdown appended to ``$GITHUB_STEP_SUMMARY`` when it is set.

The verdict line comes first, then the per-role table, the failing clauses and the largest
regressions in a ``<details>`` block. Prompts and replies appear only with ini
``distill_summary_cases = true``. GitHub shows at most 1 MiB per step, so the text is cut at a
line, with a note, to fit what the step's file has left; the verdict line is never cut.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_distill.verdict import view

LIMIT_BYTES = 1024 * 1024
MAX_REGRESSIONS = 50
_MARKS = {"passed": "✅", "failed": "❌", "not-evaluated": "⚠️", "no-gate": "\N{WHITE CIRCLE}"}
_TRUNCATED = (
    "\n_Summary truncated to stay under GitHub's 1 MiB limit; the HTML and JSON reports hold "
    "every case._\n"
)


def target() -> Path | None:
    value = os.environ.get("GITHUB_STEP_SUMMARY", "").strip()
    return Path(value) if value else None


def append(path: Path, data: Mapping[str, Any], *, cases: bool = False) -> None:
    """Append the summary; a step's file is appended to by every tool, so no rename here."""
    used = path.stat().st_size if path.exists() else 0
    text = render(data, cases=cases, budget=max(LIMIT_BYTES - used, 0))
    with path.open("a", encoding="utf-8") as out:
        out.write(text)


def render(data: Mapping[str, Any], *, cases: bool = False, budget: int = LIMIT_BYTES) -> str:
    out = _Budget(budget - len(_TRUNCATED.encode()))
    verdict = view.verdict(data)
    out.force(f"### {_MARKS[verdict.state]} pytest-distill: {_verdict_words(verdict)}\n\n")
    _role_table(out, data)
    _failing_clauses(out, data)
    _regressions(out, data, cases)
    return out.text()


def _verdict_words(verdict: view.Verdict) -> str:
    words = {
        "passed": "gate **passed**",
        "failed": "gate **failed**",
        "not-evaluated": "gate **not evaluated** (not passed)",
        "no-gate": "no gate",
    }[verdict.state]
    return f"{words}: {_cell(verdict.reason)}" if verdict.reason else words


def _role_table(out: _Budget, data: Mapping[str, Any]) -> None:
    split = view.gate_split(data)
    scores = data.get("scores") or {}
    if not view.roles(data):  # no item ran (a collection error): the verdict line says why
        return
    out.add(f"**{split} cases, by role**\n\n")
    out.add("| role | cases | pass | score | prompt tok | compl tok | p50 ms | cost |\n")
    out.add("|---|--:|--:|--:|--:|--:|--:|--:|\n")
    for role in view.roles(data):
        agg = (scores.get(role) or {}).get(split) or {}
        interval = view.interval(agg)
        score = _num(agg.get("mean_score"), "{:.3f}")
        if interval:
            score += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
        p50 = agg.get("latency_p50_s")
        out.add(
            f"| {_cell(role)} | {agg.get('cases', '-')} | {_num(agg.get('pass_rate'), '{:.1%}')} "
            f"| {score} | {_num(agg.get('prompt_tokens'), '{:,}')} "
            f"| {_num(agg.get('completion_tokens'), '{:,}')} "
            f"| {_num(p50 * 1000 if isinstance(p50, (int, float)) else None, '{:.0f}')} "
            f"| {_num(agg.get('cost_usd'), '${:.4f}')} |\n"
        )
    out.add("\n")


def _failing_clauses(out: _Budget, data: Mapping[str, Any]) -> None:
    gate = data.get("gate")
    failing = [
        c for c in (gate.get("clauses") or () if isinstance(gate, Mapping) else ())
        if c.get("passed") is not True
    ]  # fmt: skip
    if failing:
        out.add("**Failing clauses**\n\n")
        for clause in failing:
            out.add(f"- ❌ {_cell(clause.get('explanation') or clause.get('text', ''))}\n")
        out.add("\n")
    if data.get("distill_error"):
        out.add(f"**Distill step failed**: {_cell(data['distill_error'])}\n\n")


def _regressions(out: _Budget, data: Mapping[str, Any], cases: bool) -> None:
    found = view.cases(data)
    ranked = view.regressions(found)
    if not ranked:
        return
    roles = [r for r in view.roles(data) if r in ("teacher", "student", "sft", "finetuned")]
    shown = ranked[:MAX_REGRESSIONS]
    out.add(
        f"<details><summary>Largest regressions: {_count(len(ranked), 'case')} "
        f"{'scores' if len(ranked) == 1 else 'score'} below the teacher"
        f"{f' (the {len(shown)} largest here)' if len(shown) < len(ranked) else ''}"
        "</summary>\n\n",
        closing="\n</details>\n",
    )
    out.add(f"| case | suite | {' | '.join(roles)} | gap |\n|---|---|{'--:|' * len(roles)}--:|\n")
    for case, gap in shown:
        cells = [_num(case.roles[r].get("score"), "{:.2f}") if r in case.roles else "-"
                 for r in roles]  # fmt: skip
        if not out.add(
            f"| {_cell(case.case_id)} | {_cell(case.suite)} | {' | '.join(cells)} | {gap:.2f} |\n"
        ):
            break
    if cases:
        out.add("\n")
        for case, _ in shown:
            if not out.add(_case_block(case, roles)):
                break
    out.close()


def _case_block(case: view.Case, roles: list[str]) -> str:
    title = f"{html.escape(case.suite)} :: {html.escape(case.case_id)}"
    parts = [f"<details><summary>{title}</summary>\n\n"]
    for role in roles:
        item = case.roles.get(role)
        if item is None:
            continue
        prompt = "\n\n".join(
            f"[{m.get('role', '')}] {m.get('content', '')}" for m in item.get("messages") or ()
        )
        parts.append(f"**{role}** prompt:\n<pre>{html.escape(prompt)}</pre>\n")
        parts.append(f"reply:\n<pre>{html.escape(str(item.get('reply') or ''))}</pre>\n\n")
    return "".join(parts) + "</details>\n"


def _cell(value: Any) -> str:
    """One line of plain text: no markup, emphasis or table break survives."""
    text = html.escape(" ".join(str(value if value is not None else "").split()), quote=False)
    return re.sub(r"([\\`*_\[\]|])", r"\\\1", text)


def _count(n: int, noun: str) -> str:
    """``1 case``, ``2 cases``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _num(value: Any, fmt: str) -> str:
    return fmt.format(value) if isinstance(value, (int, float)) else "-"


class _Budget:
    """Markdown that stops, at a whole line, before it outgrows its byte budget."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.parts: list[str] = []
        self.used = 0
        self.closing: list[str] = []
        self.truncated = False

    def force(self, text: str) -> None:
        self.parts.append(text)
        self.used += len(text.encode())

    def add(self, text: str, closing: str = "") -> bool:
        size = len(text.encode()) + sum(len(c.encode()) for c in (*self.closing, closing))
        if self.truncated or self.used + size > self.budget:
            self.truncated = True
            return False
        self.force(text)
        if closing:
            self.closing.append(closing)
        return True

    def close(self) -> None:
        if self.closing:
            self.force(self.closing.pop())

    def text(self) -> str:
        while self.closing:
            self.close()
        return "".join(self.parts) + (_TRUNCATED if self.truncated else "")
