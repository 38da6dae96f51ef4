"""The HTML report: one self-contained file (inline CSS, JS and SVG) rendered with Jinja2 from
the JSON report's data.

The verdict, tables, charts and training lineage are rendered into the page. The cases travel
as two JSON blobs in ``<script type="application/json">`` elements: a small one (ids, outcomes,
scores, changes, search text) from which the page's script renders one page of rows at a time,
and a large one (prompts, replies, grader reasons) parsed only when a case is first expanded.
Message texts are stored once in a string table, as long prompts repeat across cases.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pytest_distill.atomic import write_atomic
from pytest_distill.verdict import charts, view
from pytest_distill.verdict.scrub import scrub

AGGREGATE_FIELDS = (
    "cases",
    "passed",
    "pass_rate",
    "mean_score",
    "prompt_tokens",
    "completion_tokens",
    "latency_p50_s",
    "latency_p95_s",
    "cost_usd",
)
CLAUSE_FIELDS = ("text", "passed", "explanation")
PAGE_SIZE = 100
SPLITS = {"holdout": "Holdout cases", "all": "All cases", "train": "Train cases"}


def write(
    path: Path, data: Mapping[str, Any], secrets: Iterable[str] = (), *, scrubbed: bool = False
) -> None:
    write_atomic(path, render(data, secrets, scrubbed=scrubbed).encode("utf-8"))


def render(data: Mapping[str, Any], secrets: Iterable[str] = (), *, scrubbed: bool = False) -> str:
    """The page; ``scrubbed``: ``data`` went through :func:`scrub` with the session's secrets."""
    view.schema_version(data)
    clean = data if scrubbed else scrub(dict(data), secrets)
    page: str = _environment().get_template("report.html.j2").render(context(clean))
    return page


def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pytest_distill.verdict", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    # Compact blobs; tojson still escapes <, >, & and ' so no text can end the script element.
    env.policies["json.dumps_kwargs"] = {"separators": (",", ":"), "ensure_ascii": False}
    env.filters["interval"] = view.interval
    env.filters["extras"] = view.extras
    return env


def context(data: Mapping[str, Any]) -> dict[str, Any]:
    roles = view.roles(data)
    split = view.gate_split(data)
    found = view.cases(data)
    suites = sorted({c.suite for c in found})
    cases, details = _blobs(found, suites, roles)
    scores = data.get("scores") or {}
    gate = data.get("gate") if isinstance(data.get("gate"), Mapping) else None
    return {
        "data": data,
        "schema": data.get("schema"),
        "verdict": view.verdict(data),
        "gate": gate,
        "clause_fields": CLAUSE_FIELDS,
        "aggregate_fields": AGGREGATE_FIELDS,
        "roles": roles,
        "role_models": data.get("roles") or {},
        "split": split,
        "scores": scores,
        "suite_table": _suite_table(data.get("suites") or {}, roles, split),
        "tool_column": _has_tool_accuracy(scores),
        "paired": _paired(data.get("paired")),
        "tables": _tables(scores, roles, split),
        "chart": _score_chart(scores, roles, split),
        "training": data.get("training"),
        "loss_chart": _loss_chart(data.get("training")),
        "distill_error": data.get("distill_error"),
        "changes": view.CHANGES,
        "suite_names": suites,
        "case_count": len(found),
        "cases_blob": {"suites": suites, "roles": roles, "cases": cases, "page": PAGE_SIZE},
        "details_blob": details,
    }


def _tables(
    scores: Mapping[str, Any], roles: list[str], split: str
) -> list[tuple[str, str, list[tuple[str, Mapping[str, Any]]]]]:
    """Per split, the roles that have cases in it; the gate's split first."""
    tables = []
    for name in sorted(SPLITS, key=lambda s: s != split):
        rows = [(role, (scores.get(role) or {}).get(name) or {}) for role in roles]
        rows = [(role, agg) for role, agg in rows if agg.get("cases")]
        if rows:
            tables.append((name, SPLITS[name] + (" · the gate's" if name == split else ""), rows))
    return tables


def _has_tool_accuracy(scores: Mapping[str, Any]) -> bool:
    """Whether some role's figures have a tool-call accuracy (some case had a tool_calls
    grader): only then do the tables show that column."""
    return any(
        isinstance(agg, Mapping) and agg.get("tool_call_accuracy") is not None
        for splits in scores.values()
        if isinstance(splits, Mapping)
        for agg in splits.values()
    )


def _suite_table(
    suites: Mapping[str, Any], roles: list[str], split: str
) -> tuple[str, list[tuple[str, Mapping[str, Any]]]]:
    """The by-suite caption and rows (``suite · role``, aggregate) on the gate's split.
    Version 2 splits each suite's role by ``all``/``train``/``holdout``; version 1 holds one
    aggregate of all cases."""
    rows = []
    shown = split
    for suite, per_role in suites.items():
        for role in roles:
            figures = (per_role or {}).get(role)
            if not isinstance(figures, Mapping):
                continue
            if any(isinstance(figures.get(s), Mapping) for s in SPLITS):
                agg = figures.get(split) or {}
            else:  # version 1: one aggregate over every case
                agg, shown = figures, "all"
            if agg.get("cases"):
                rows.append((f"{suite} · {role}", agg))
    caption = f"By suite · {SPLITS.get(shown, shown)}"
    return caption + (" · the gate's" if shown == split else ""), rows


def _paired(section: Any) -> list[dict[str, Any]]:
    """The report's paired comparisons, each with its ``shown`` text: the interval, or why
    there is none (too few cases, every case errored)."""
    if not isinstance(section, Mapping):
        return []
    found = []
    for pair in section.get("pairs") or ():
        if not isinstance(pair, Mapping):
            continue
        n, errored = pair.get("n") or 0, pair.get("errored") or 0
        low, high, mean = pair.get("low"), pair.get("high"), pair.get("mean_difference")
        if not n:
            shown = f"no paired cases ({errored} errored)"
        elif pair.get("too_few") or not all(isinstance(v, (int, float)) for v in (low, high)):
            shown = f"too few cases (n={n})"
        else:
            shown = f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"
        found.append({**pair, "label": f"{pair.get('a')} - {pair.get('b')}", "shown": shown})
    return found


def _score_chart(scores: Mapping[str, Any], roles: list[str], split: str) -> charts.BarChart:
    values = []
    for role in roles:
        agg = (scores.get(role) or {}).get(split) or (scores.get(role) or {}).get("all") or {}
        values.append((role, float(agg.get("mean_score") or 0.0), view.interval(agg)))
    return charts.bar_chart(values)


def _loss_chart(training: Any) -> charts.LineChart | None:
    if not isinstance(training, Mapping):
        return None
    points = []
    for metric in training.get("metrics") or ():
        loss = metric.get("train_loss", metric.get("loss"))
        if isinstance(metric.get("step"), (int, float)) and isinstance(loss, (int, float)):
            points.append((float(metric["step"]), float(loss)))
    return charts.line_chart(sorted(points))


def _blobs(
    found: list[view.Case], suites: list[str], roles: list[str]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    strings: dict[str, int] = {}
    suite_index = {s: n for n, s in enumerate(suites)}
    change_index = {key: n for n, (key, *_) in enumerate(view.CHANGES)}
    rows, details = [], []
    for case in found:
        replies = [
            " ".join([str(item.get("reply") or ""), *_calls(item.get("tool_calls"))])
            for item in case.roles.values()
        ]
        rows.append(
            {
                "s": suite_index[case.suite],
                "i": case.case_id,
                "p": case.split,
                "r": {
                    role: [1 if item.get("passed") else 0, item.get("score")]
                    for role, item in case.roles.items()
                },
                "c": [change_index[k] for k in case.changes()],
                "t": " ".join([case.case_id, _text(case.reference), *replies]).lower()[:2000],
            }
        )
        details.append(
            {
                "ref": case.reference,
                "roles": {role: _detail(item, strings) for role, item in case.roles.items()},
            }
        )
    return rows, {"strings": list(strings), "cases": details}


def _detail(item: Mapping[str, Any], strings: dict[str, int]) -> dict[str, Any]:
    messages = item.get("messages")
    return {
        "model": item.get("model"),
        "m": None
        if messages is None
        else [
            [str(m.get("role", "")), strings.setdefault(_message_text(m), len(strings))]
            for m in messages
        ],
        "o": item.get("reply"),
        "tc": _calls(item.get("tool_calls")) or None,
        "g": [
            [g.get("name"), g.get("score"), g.get("passed"), g.get("reason")]
            for g in item.get("grades") or ()
        ],
        "tok": [item.get("prompt_tokens"), item.get("completion_tokens")],
        "lat": item.get("latency_s"),
    }


def _calls(calls: Any) -> list[str]:
    """Tool calls (the API's shape) as ``name(arguments)`` lines."""
    shown = []
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            shown.append(f"{function.get('name')}({function.get('arguments', '')})")
    return shown


def _message_text(message: Mapping[str, Any]) -> str:
    """A prompt message's text: its content, then its tool calls; a tool result names its call."""
    lines = [_text(message.get("content"))] if message.get("content") is not None else []
    lines += _calls(message.get("tool_calls"))
    if message.get("tool_call_id"):
        lines.insert(0, f"[{message['tool_call_id']}]")
    return "\n".join(lines)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # content parts
        return "\n".join(str(p.get("text", p)) if isinstance(p, dict) else str(p) for p in value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
