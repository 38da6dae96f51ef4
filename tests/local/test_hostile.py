"""The server under hostile input: odd numbers and dates, guessed keys, stalled bodies, cookie
floods, and the headers and permissions that keep a browser and other local users out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest

OpenApi = Any


@pytest.fixture
def http(server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


@pytest.fixture
def pages(server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url.removesuffix("/v1"), timeout=30) as client:
        yield client


def _error(response: httpx.Response, status: int, openapi: OpenApi) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    openapi.validate_schema("ErrorResponse", body)
    error: dict[str, Any] = body["error"]
    return error


# --- numbers, dates and cursors -------------------------------------------------------------

ODD_NUMBERS = ["²", "١٢", "１０", "+5", " 5", "5_0", "9" * 30, "1e3", ""]


@pytest.mark.parametrize("value", ODD_NUMBERS)
@pytest.mark.parametrize(
    "path",
    [
        "/files",
        "/chat/completions",
        "/fine_tuning/jobs",
        "/fine_tuning/jobs/ftjob-x/events",
        "/fine_tuning/jobs/ftjob-x/checkpoints",
        "/chat/completions/chatcmpl-x/messages",
    ],
)
def test_an_odd_limit_is_a_400_naming_it(
    http: httpx.Client, openapi: OpenApi, path: str, value: str
) -> None:
    error = _error(http.get(path, params={"limit": value}), 400, openapi)
    assert error["param"] == "limit"


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ({"until": "9999-12-31"}, "until"),
        ({"since": "２０２４-01-01"}, "since"),
        ({"since": "2024-W01-1"}, "since"),
        ({"until": "not a day"}, "until"),
        ({"before": "99999999999999999999"}, "before"),
        ({"before": "9223372036854775808"}, "before"),
        ({"before": "²"}, "before"),
        ({"before": "-1"}, "before"),
    ],
)
def test_an_odd_date_or_cursor_on_the_completions_page_is_shown_on_the_page(
    pages: httpx.Client, query: dict[str, str], named: str
) -> None:
    page = pages.get("/completions", params=query)
    assert page.status_code == 400, page.text
    assert 'class="error"' in page.text
    assert f"`{named}`" in page.text


def test_the_largest_cursor_and_last_dates_are_fine(pages: httpx.Client) -> None:
    query = {"before": str(2**63 - 1), "since": "0001-01-01", "until": "9999-12-30"}
    assert pages.get("/completions", params=query).status_code == 200


def test_odd_epochs_on_the_distill_form_are_refused_on_the_page() -> None:
    from pytest_distill.local.dashboard.distill import SelectionError, parse_request

    for value in ["²", "9" * 30, "+3"]:
        with pytest.raises(SelectionError, match="epochs"):
            parse_request({"epochs": value, "base_model": "tiny"}, [])
    assert parse_request({"epochs": "7", "base_model": "tiny"}, []).epochs == 7
