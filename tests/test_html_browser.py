"""The example project's HTML report in a real browser: Debian's headless chromium, driven by
Playwright's Python package (which must not download a browser of its own).

Install the browser with ``apt-get install -y chromium``; run with ``pytest -m browser``.
The example is replayed from its cassettes, so no model is needed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.browser

EXAMPLE = Path(__file__).resolve().parents[1] / "example_project"


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The example's recorded run, replayed with the JSON and HTML reports."""
    project = tmp_path_factory.mktemp("example") / "example_project"
    ignore = shutil.ignore_patterns(".distill", "report.json", "run.log", "__pycache__", "*.png")
    shutil.copytree(EXAMPLE, project, ignore=ignore)
    command = [
        sys.executable, "-m", "pytest", "--distill", "--distill-record-mode=none",
        "--distill-report=report.json", "--distill-html=report.html", "-p", "no:cacheprovider", "-q",
    ]  # fmt: skip
    # Module-scoped, so conftest's per-test environment does not apply: keep this run off the
    # summary of the CI job that runs the suite.
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    done = subprocess.run(
        command, cwd=project, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return project / "report.html", json.loads((project / "report.json").read_text())


@pytest.fixture(scope="module")
def browser(chromium: Any) -> Any:
    return chromium  # the session's one browser (tests/conftest.py)


@pytest.fixture
def page(browser: Any, replayed: tuple[Path, dict[str, Any]]) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    requests: list[str] = []
    opened = context.new_page()
    opened.on("request", lambda r: requests.append(r.url))
    opened.goto(replayed[0].as_uri())
    yield opened
    assert [u for u in requests if not u.startswith("file:")] == []  # nothing from the network
    context.close()


def _expected(report: dict[str, Any], wrong: str, right: str) -> list[str]:
    outcome: dict[str, dict[str, bool]] = {}
    for item in report["items"]:
        outcome.setdefault(item["case_id"], {})[item["role"]] = item["passed"]
    return [
        case
        for case, roles in outcome.items()
        if wrong in roles and right in roles and not roles[wrong] and roles[right]
    ]


def test_example_report_shows_verdict_chart_and_filtered_cases(
    page: Any, replayed: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    report = replayed[1]
    assert report["gate"]["passed"] is True
    assert page.locator("#verdict-text").inner_text() == "Gate passed"
    assert [b.get_attribute("data-role") for b in page.locator("#score-chart g.bar").all()] == [
        "teacher", "student", "finetuned",
    ]  # fmt: skip
    assert page.locator("#loss-chart circle.dot").count() == len(report["training"]["metrics"])

    expected = _expected(report, "finetuned", "teacher")
    assert expected  # the recorded run has such cases: the filter is tested on real ones
    page.select_option("#f-change", label="fine-tuned wrong, teacher right")
    shown = page.locator("#case-rows tr.case td.case-id button").all_inner_texts()
    assert sorted(shown) == sorted(expected)  # fewer than a page: all of them are rows
    assert page.locator("#status").inner_text() == f"{len(expected)} of 400 cases match"

    page.locator("#case-rows tr.case button", has_text=expected[0]).click()
    detail = page.locator("#case-rows tr.detail")
    replies = {
        item["role"]: item["reply"] for item in report["items"] if item["case_id"] == expected[0]
    }
    for role, reply in replies.items():
        assert detail.locator(f'[data-role="{role}"] pre.reply').inner_text() == reply
    detail.locator('[data-role="student"] summary').click()  # the student's prompt
    assert detail.locator('[data-role="student"] details pre').count() >= 1
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    if os.environ.get("DISTILL_UPDATE_SCREENSHOT"):
        shutil.copyfile(tmp_path / "report.png", EXAMPLE / "report.png")

    page.select_option("#f-change", label="any")
    page.fill("#f-text", expected[-1])
    expect(page.locator("#status")).not_to_have_text("400 cases")  # the search has run
    assert expected[-1] in page.locator("#case-rows tr.case td.case-id button").all_inner_texts()
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_example_report_pages_through_all_cases_and_reads_in_a_narrow_window(
    page: Any, tmp_path: Path
) -> None:
    assert page.locator("#case-rows tr.case").count() == 100
    page.click("#next")
    assert page.locator("#page").inner_text().startswith("rows 101\N{EN DASH}200 of 400")
    page.set_viewport_size({"width": 400, "height": 800})
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 400  # wide tables scroll inside their own box, the page does not
    page.emulate_media(media="print")
    page.evaluate("window.dispatchEvent(new Event('beforeprint'))")
    assert page.locator("#case-rows tr.case").count() == 400
    assert not page.locator("#filters").is_visible()
    page.screenshot(path=str(tmp_path / "narrow.png"), full_page=True)
