"""The dashboard in a real browser: store, filter, select, distill, follow, try the student."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import openai
import pytest

pytestmark = pytest.mark.browser

TASKS = {"dates": "Normalise the date: {n} March", "orders": "Order {n} mice for desk 4"}


def _store_completions(base_url: str) -> None:
    with openai.OpenAI(base_url=base_url, api_key="local", max_retries=0) as client:
        for task, template in TASKS.items():
            for n in range(15):
                client.chat.completions.create(
                    model="tiny",
                    messages=[{"role": "user", "content": template.format(n=n + 1)}],
                    max_tokens=6,
                    temperature=0,
                    store=True,
                    metadata={"task": task},
                )


def _shots(tmp_path: Path) -> list[Path]:
    """Screenshots go under the test's tmp path, and also where DISTILL_SCREENSHOTS says."""
    places = [tmp_path]
    if os.environ.get("DISTILL_SCREENSHOTS"):
        places.append(Path(os.environ["DISTILL_SCREENSHOTS"]))
    for place in places:
        place.mkdir(parents=True, exist_ok=True)
    return places


def _snap(page: Any, places: list[Path], name: str) -> None:
    for place in places:
        page.screenshot(path=str(place / f"dashboard-{name}.png"), full_page=True)


def test_store_filter_distill_follow_and_try_the_student(
    dashboard_server: Any, chromium: Any, tmp_path: Path
) -> None:
    _store_completions(dashboard_server.base_url)
    root = dashboard_server.base_url.removesuffix("/v1")
    places = _shots(tmp_path)
    page = chromium.new_page(viewport={"width": 1200, "height": 800})

    page.goto(f"{root}/")
    assert page.locator("tbody tr").count() == 30
    _snap(page, places, "1-completions")

    page.fill("input[name=key]", "task")
    page.fill("input[name=value]", "dates")
    page.click("#filter button[type=submit]")
    rows = page.locator("tbody tr")
    assert rows.count() == 15
    assert all("task=dates" in rows.nth(i).inner_text() for i in range(15))
    _snap(page, places, "2-filtered")

    page.select_option("#scope", "1")  # everything the filter matches
    page.fill("input[name=epochs]", "2")
    page.click("#distill-button")
    page.wait_for_url("**/jobs/ftjob-*")
    page.locator("#status", has_text="succeeded").wait_for(timeout=180_000)
    assert page.locator("svg#loss polyline").count() == 1
    _snap(page, places, "3-job")
    model = page.locator("#model code").inner_text()
    assert model.startswith("ft:tiny:local:dashboard:")

    page.click("#model")
    assert page.locator(f"text={model}").count() >= 1
    assert "15 examples" in page.content()
    _snap(page, places, "4-models")

    page.goto(f"{root}/playground?model_a=tiny&model_b={model}")
    page.fill("textarea[name=prompt]", "Normalise the date: 3 March")
    page.click("#send")
    reply = page.locator(f"pre.reply[data-model='{model}']")
    reply.wait_for(timeout=60_000)
    with openai.OpenAI(base_url=dashboard_server.base_url, api_key="local") as client:
        expected = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Normalise the date: 3 March"}],
            temperature=0,
            max_tokens=128,
        )
    assert reply.inner_text().strip() == (expected.choices[0].message.content or "").strip()
    _snap(page, places, "5-playground")

    reports = Path(dashboard_server.data_dir) / "reports"
    reports.mkdir(exist_ok=True)
    (reports / "nightly.html").write_text("<h1>gate passed on holdout cases</h1>")
    page.goto(f"{root}/reports")
    page.click("text=nightly.html")
    page.locator("h1", has_text="gate passed on holdout cases").wait_for(timeout=30_000)
    page.goto(f"{root}/reports")
    _snap(page, places, "6-reports")
    page.close()


def test_a_selection_too_small_says_why_and_starts_nothing(
    dashboard_server: Any, chromium: Any
) -> None:
    _store_completions(dashboard_server.base_url)
    root = dashboard_server.base_url.removesuffix("/v1")
    page = chromium.new_page()
    page.goto(f"{root}/completions")
    for box in page.locator("input.pick").all()[:3]:
        box.check()
    page.click("#distill-button")
    assert "Not distilled: 3 completions selected; fine-tuning needs at least 10" in (
        page.locator("[role=alert]").inner_text()
    )
    with openai.OpenAI(base_url=dashboard_server.base_url, api_key="local") as client:
        assert client.fine_tuning.jobs.list().data == []
        assert client.files.list().data == []
    page.close()
