from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pytest_distill.local.models import ModelUnavailable
    from pytest_distill.local.tiny import create_tiny_model

    try:
        return create_tiny_model(tmp_path_factory.mktemp("tiny-model"))
    except ModelUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def dashboard_server(tmp_path: Path, tiny_model: Path) -> Iterator[Any]:
    from pytest_distill.local import LocalServer

    with LocalServer(tmp_path / "server", models={"tiny": tiny_model}) as srv:
        yield srv


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright; Playwright never downloads a browser of its own."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (see README)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
