"""The HTML report: written by the plugin and by ``distill-report``, self-contained, safe."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from html import unescape
from pathlib import Path
from typing import Any

import pytest
import report_factory as factory
from conftest import SUITE
from scripted_server import ScriptedServer

from pytest_distill.verdict import charts, html, view
from pytest_distill.verdict.cli import main as distill_report

OUTCOMES = {
    "a": {"teacher": True, "student": False, "finetuned": True},
    "b": {"teacher": True, "student": True, "finetuned": False},
    "c": {"teacher": False, "student": False, "finetuned": False},
}


def blobs(page: str) -> tuple[dict[str, Any], dict[str, Any]]:
    found = {
        m.group(1): json.loads(m.group(2))
        for m in re.finditer(r'<script type="application/json" id="([\w-]+)">(.*?)</script>', page)
    }
    return found["distill-cases"], found["distill-details"]


def bars(page: str) -> list[str]:
    return re.findall(r'<g class="bar role-[\w-]+" data-role="([\w-]+)">', page)


def test_plugin_writes_the_html_report_with_the_prompt_each_role_saw(
    project: pytest.Pytester,
) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    result = project.runpytest(
        "--distill-report=report.json", "--distill-html=out/report.html",
        "--distill-gate", "student >= teacher",
    )  # fmt: skip
    assert result.ret == 6
    report = json.loads((project.path / "report.json").read_text())
    item = next(i for i in report["items"] if (i["case_id"], i["role"]) == ("it", "student"))
    assert item["messages"][-1] == {"role": "user", "content": "Capital of Italy?"}
    assert item["reference"] == "Rome"
    page = (project.path / "out" / "report.html").read_text()
    assert '<h1 id="verdict-text">Gate failed</h1>' in page
    assert bars(page) == ["teacher", "student"]
    cases, details = blobs(page)
    it = cases["cases"][[c["i"] for c in cases["cases"]].index("it")]
    assert it["r"] == {"teacher": [1, 1.0], "student": [0, 0.0]}
    detail = details["cases"][cases["cases"].index(it)]
    assert detail["roles"]["student"]["o"] == "Milan"
    user = detail["roles"]["student"]["m"][-1]
    assert user[0] == "user" and details["strings"][user[1]] == "Capital of Italy?"


def test_ini_distill_html_writes_the_page_under_xdist_too(project: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    project.makefile(".eval.yaml", capitals=SUITE)
    project.makeini(project.path.joinpath("tox.ini").read_text() + "\ndistill_html = r.html\n")
    project.runpytest("-n", "2")
    page = (project.path / "r.html").read_text()
    assert '<h1 id="verdict-text">No gate</h1>' in page
    assert len(blobs(page)[0]["cases"]) == 5


def test_page_loads_nothing_from_the_network() -> None:
    page = html.render(factory.report(OUTCOMES))
    assert not re.search(r"\b(src|href)\s*=", page)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert "default-src 'none'" in page  # the page's policy forbids fetching anything


def test_chart_has_one_bar_per_role_and_whiskers_only_where_intervals_are_known() -> None:
    data = factory.report(OUTCOMES)
    assert bars(html.render(data)) == ["teacher", "student", "finetuned"]
    assert 'class="whisker"' not in html.render(data)
    data["scores"]["finetuned"]["holdout"]["interval"] = [0.2, 0.9]
    page = html.render(data)
    assert page.count('class="whisker"') == 1
    assert "[0.200, 0.900]" in page


def test_bar_chart_geometry_follows_the_values() -> None:
    chart = charts.bar_chart([("a", 1.0, None), ("b", 0.5, (0.25, 0.75)), ("c", 0.0, None)])
    full, half, empty = chart.bars
    assert full.height == chart.plot_height and empty.height == 0
    assert half.height == chart.plot_height / 2
    assert half.whisker == (
        chart.top + chart.plot_height / 4,
        chart.top + chart.plot_height * 3 / 4,
    )
    assert full.x < half.x < empty.x


def test_loss_curve_is_drawn_from_the_metrics_in_the_lineage() -> None:
    metrics = [{"step": s, "train_loss": 1 / s} for s in (1, 2, 4)]
    training = {"job_id": "ftjob-7", "file_id": "file-3", "sha256": "ab" * 32, "metrics": metrics}
    page = html.render(factory.report(OUTCOMES, training=training))
    assert "ftjob-7" in page and "file-3" in page
    assert page.count('class="dot"') == 3
    assert "No training in this run" in html.render(factory.report(OUTCOMES))


def test_replies_cannot_end_the_script_element_or_inject_markup() -> None:
    data = factory.report(OUTCOMES)
    evil = "</script><script>alert(1)</script><b>bold</b>"
    data["items"][0]["reply"] = evil
    data["gate"]["clauses"][0]["explanation"] = "<img onerror=x>"
    page = html.render(data)
    assert "<script>alert" not in page and "<img onerror" not in page
    assert blobs(page)[1]["cases"][0]["roles"]["teacher"]["o"] == evil


def test_no_key_or_authorization_reaches_the_page() -> None:
    data = factory.report(OUTCOMES)
    data["roles"]["teacher"]["endpoint"] = (
        "https://user:hunter22pass@example.test/v1?api_key=abc123"
    )
    data["items"][0]["messages"][0]["content"] = "key sk-proj-0123456789abcdefghij here"
    data["items"][1]["reply"] = "Authorization: Bearer abcdefghijklmnop"
    data["items"][2]["authorization"] = "Bearer zyxwvutsrqponmlk"
    data["items"][3]["reply"] = "the env key is env-secret-value-42"
    page = html.render(data, secrets=["env-secret-value-42"])
    for secret in ("hunter22pass", "abc123", "sk-proj-0123", "abcdefghijklmnop", "zyxwvutsrq",
                   "env-secret-value-42"):  # fmt: skip
        assert secret not in page
    assert "[redacted]" in page


def test_no_api_key_from_the_environment_reaches_report_or_page(
    project: pytest.Pytester, server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "local-test-key-0042")
    server.script("big", {"Capital of France?": "Paris, says local-test-key-0042"})
    project.makefile(".eval.yaml", capitals=SUITE)
    project.runpytest("--distill-report=r.json", "--distill-html=r.html")
    for name in ("r.json", "r.html"):
        text = (project.path / name).read_text()
        assert "local-test-key-0042" not in text and "[redacted]" in text


def test_cases_know_their_changes_between_roles() -> None:
    found = {c.case_id: c for c in view.cases(factory.report(OUTCOMES))}
    assert found["a"].changes() == ("student-wrong-finetuned-right",)
    assert found["b"].changes() == (
        "finetuned-wrong-teacher-right",
        "finetuned-wrong-student-right",
    )
    assert found["c"].changes() == ()


def test_a_report_of_main_before_prompts_and_lineage_still_renders() -> None:
    data = factory.report(OUTCOMES)
    for item in data["items"]:
        del item["messages"], item["reference"]
    page = html.render(data)
    assert '<h1 id="verdict-text">Gate passed</h1>' in page
    assert blobs(page)[1]["cases"][0]["roles"]["teacher"]["m"] is None


def test_a_newer_report_with_unknown_fields_and_intervals_renders_them() -> None:
    data = factory.report(OUTCOMES, gate_passed=False)
    data["schema"] = "pytest-distill/report/2"
    data["gate"]["clauses"][0].update(ci={"low": 0.61, "high": 0.79}, p_value=0.031)
    page = html.render(data)
    assert "interval [0.610, 0.790]" in page and "p_value: 0.031" in page
    assert "Gate failed" in page


def test_gate_not_evaluated_never_reads_as_passed() -> None:
    page = html.render(factory.report(OUTCOMES, gate_passed=None))
    assert '<h1 id="verdict-text">Gate not evaluated</h1>' in page
    assert "Gate passed" not in page


def test_distill_report_renders_a_saved_report(tmp_path: Path) -> None:
    source = tmp_path / "report.json"
    source.write_text(json.dumps(factory.report(OUTCOMES, gate_passed=False)))
    script = Path(sys.executable).with_name("distill-report")
    done = subprocess.run(
        [str(script), str(source), "--html", str(tmp_path / "out.html")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Gate failed" in (tmp_path / "out.html").read_text()


def test_distill_report_names_the_file_that_is_not_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "something/else"}))
    assert distill_report([str(other), "--html", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"distill-report: {other}: schema 'something/else' is not")
    assert "\n" not in err and not (tmp_path / "x.html").exists()
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert distill_report([str(broken), "--html", str(tmp_path / "x.html")]) == 2
    assert "not JSON" in capsys.readouterr().err


def test_render_does_not_change_the_report_it_is_given() -> None:
    data = factory.report(OUTCOMES)
    data["items"][0]["reply"] = "sk-proj-0123456789abcdefghij"
    before = copy.deepcopy(data)
    html.render(data)
    assert data == before


def table_rows(page: str, table_id: str) -> tuple[str, dict[str, list[str]]]:
    """A rendered table's caption and its rows: header cell -> the data cells' text."""
    found = re.search(rf'<table class="agg" id="{table_id}">(.*?)</table>', page, re.S)
    assert found, f"no table {table_id}"
    body = found.group(1)
    caption = re.search(r"<caption>(.*?)</caption>", body, re.S)
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", body.split("<tbody>")[1], re.S):
        head = re.search(r'<th scope="row">(.*?)</th>', row, re.S)
        cells = [
            unescape(re.sub(r"<[^>]+>", "", c)).strip()
            for c in re.findall(r"<td>(.*?)</td>", row, re.S)
        ]
        rows[unescape(head.group(1)).strip() if head else ""] = cells
    return (unescape(caption.group(1)).strip() if caption else ""), rows


def test_by_suite_table_shows_the_gates_split_of_a_version_2_report() -> None:
    data = factory.report(OUTCOMES)
    data["schema"] = "pytest-distill/report/2"
    data["suites"] = {
        "meetings": {
            role: {
                "all": factory.agg(100, 60, 0.6),
                "train": factory.agg(80, 59, 0.74),
                "holdout": factory.agg(20, 1, 0.05),
            }
            for role in ("teacher", "finetuned")
        }
    }
    caption, rows = table_rows(html.render(data), "table-suites")
    assert caption == "By suite · Holdout cases · the gate's"
    assert rows["meetings · finetuned"][:3] == ["20", "5.0%", "0.050"]
    assert rows["meetings · teacher"][:3] == ["20", "5.0%", "0.050"]
    assert "\N{EN DASH}" not in rows["meetings · teacher"][:5]


def test_by_suite_table_of_a_version_1_report_shows_all_cases() -> None:
    caption, rows = table_rows(html.render(factory.report(OUTCOMES)), "table-suites")
    assert caption == "By suite · All cases"
    assert rows["due_dates · teacher"][:3] == ["3", "66.7%", "0.667"]


def test_paired_table_says_too_few_and_errored_instead_of_numbers() -> None:
    data = factory.report(OUTCOMES)
    data["schema"] = "pytest-distill/report/2"
    pair = {"a": "finetuned", "b": "teacher", "better": 1, "worse": 0, "errored": 0}
    data["paired"] = {
        "confidence": 0.95,
        "pairs": [
            {**pair, "n": 40, "mean_difference": 0.1, "low": 0.02, "high": 0.18, "too_few": False},
            {**pair, "b": "student", "n": 2, "mean_difference": 0.5, "low": None, "too_few": True},
            {**pair, "a": "student", "n": 0, "mean_difference": None, "errored": 46},
        ],
    }
    caption, rows = table_rows(html.render(data), "table-paired")
    assert caption.startswith("Paired differences on holdout cases (95% CI")
    assert rows["finetuned - teacher"][:3] == ["40", "+0.100 [+0.020, +0.180]", "1"]
    assert rows["finetuned - student"][1] == "too few cases (n=2)"
    assert rows["student - teacher"][1] == "no paired cases (46 errored)"
