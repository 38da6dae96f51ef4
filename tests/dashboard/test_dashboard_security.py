"""The dashboard changes nothing for a request without the session's CSRF token, or from a
foreign site; with an API key, pages need the key once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest


def _store(base_url: str, n: int = 12) -> None:
    with openai.OpenAI(base_url=base_url, api_key="local", max_retries=0) as client:
        for i in range(n):
            client.chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": f"Say {i}"}],
                max_tokens=4,
                store=True,
                metadata={"task": "t"},
            )


def _distill_form(csrf: str | None) -> dict[str, str]:
    form = {"all": "1", "base_model": "tiny", "suffix": "x", "epochs": "1"}
    return form if csrf is None else {**form, "csrf": csrf}


def _jobs(base_url: str) -> list[Any]:
    with openai.OpenAI(base_url=base_url, api_key="local") as client:
        return list(client.fine_tuning.jobs.list().data)


def test_a_post_without_the_csrf_token_or_from_a_foreign_origin_changes_nothing(
    dashboard_server: Any,
) -> None:
    _store(dashboard_server.base_url)
    root = dashboard_server.base_url.removesuffix("/v1")
    with httpx2.Client(base_url=root) as browser:
        page = browser.get("/completions")
        assert page.status_code == 200
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None

        missing = browser.post("/distill", data=_distill_form(None))
        assert missing.status_code == 403
        wrong = browser.post("/distill", data=_distill_form("forged"))
        assert wrong.status_code == 403
        foreign = browser.post(
            "/distill",
            data=_distill_form(csrf.group(1)),
            headers={"Origin": "http://evil.example"},
        )
        assert foreign.status_code == 403
        assert _jobs(dashboard_server.base_url) == []

        with httpx2.Client(base_url=root) as stranger:  # no session cookie at all
            assert stranger.post("/distill", data=_distill_form(csrf.group(1))).status_code == 403
        assert _jobs(dashboard_server.base_url) == []

        done = browser.post("/distill", data=_distill_form(csrf.group(1)))
        assert done.status_code == 303
        assert done.headers["location"].startswith("/jobs/ftjob-")
        assert len(_jobs(dashboard_server.base_url)) == 1


def test_with_an_api_key_the_pages_ask_for_it_once(tmp_path: Path, tiny_model: Path) -> None:
    from distill_server import LocalServer

    with LocalServer(tmp_path, models={"tiny": tiny_model}, api_key="sekrit") as server:
        root = server.base_url.removesuffix("/v1")
        with httpx2.Client(base_url=root) as browser:
            first = browser.get("/completions")
            assert first.status_code == 303
            assert first.headers["location"] == "/login?next=/completions"
            refused = browser.post("/login", data={"key": "guess", "next": "/completions"})
            assert refused.status_code == 401
            assert "distill_session" not in browser.cookies
            signed_in = browser.post("/login", data={"key": "sekrit", "next": "/jobs"})
            assert signed_in.status_code == 303 and signed_in.headers["location"] == "/jobs"
            assert browser.get("/jobs").status_code == 200
            # The session opens pages, never the API: that still needs the bearer key.
            assert browser.get("/v1/models").status_code == 401
        assert "sekrit" not in first.text


@pytest.mark.parametrize("path", ["/completions/nope", "/jobs/ftjob-nope", "/reports/x.html"])
def test_unknown_objects_answer_a_404_page(dashboard_server: Any, path: str) -> None:
    root = dashboard_server.base_url.removesuffix("/v1")
    with httpx2.Client(base_url=root) as browser:
        answer = browser.get(path)
    assert answer.status_code == 404
    assert "Not found" in answer.text
