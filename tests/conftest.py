from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# httpx2 maps httpcore2's errors to its own (the SDK's APIConnectionError) by classes it looks
# up once, on its first request: first imported inside an in-process run, httpcore2 would be
# forgotten after it and imported anew, its errors then classes the map does not hold.
import httpcore2  # noqa: F401
import pytest

# numpy refuses to load twice in one process, and pytester's in-process runs forget modules
# first imported inside them: load the gate's statistics (scipy, numpy) once, up front.
import scipy.stats  # noqa: F401

sys.path.insert(0, str(Path(__file__).parent))

from scripted_server import ScriptedServer

CAPITALS = {
    "Capital of France?": "Paris",
    "Capital of Italy?": "Rome",
    "Capital of Spain?": "Madrid",
    "Capital of Japan?": "Tokyo",
    "Capital of Peru?": "Lima",
}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few-layer model of SmolLM2's architecture, made locally in seconds."""
    pytest.importorskip("torch")
    from tiny_model import create_tiny_model

    from distill_server.models import ModelUnavailable

    try:
        return create_tiny_model(tmp_path_factory.mktemp("tiny"))
    except ModelUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(autouse=True)
def _live_traffic_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``CI`` set, pytest-distill replays cassettes by default; these tests talk to live
    loopback servers unless they choose a record mode themselves."""
    monkeypatch.delenv("CI", raising=False)
    # Nor does a test append to the summary of the CI job that runs this suite.
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    """A scripted OpenAI-compatible server: ``big`` knows every capital, ``small`` two."""
    with ScriptedServer() as srv:
        srv.script("big", CAPITALS)
        srv.script("small", {"Capital of France?": "Paris", "Capital of Italy?": "Milan"})
        yield srv


@pytest.fixture
def project(pytester: pytest.Pytester, server: ScriptedServer) -> pytest.Pytester:
    """A pytester project whose teacher is ``big`` and student ``small`` on the server."""
    pytester.makeini(
        f"""
        [pytest]
        distill_teacher_model = big
        distill_teacher_endpoint = {server.base_url}
        distill_student_model = small
        distill_student_endpoint = {server.base_url}
        """
    )
    return pytester


SUITE = """\
name: capitals
prompt:
  system: Answer with the capital only.
  user: "Capital of {{ country }}?"
graders:
  - type: string_check
    operation: eq
cases:
  - id: fr
    vars: {country: France}
    reference: Paris
  - id: it
    vars: {country: Italy}
    reference: Rome
  - id: es
    vars: {country: Spain}
    reference: Madrid
  - id: jp
    vars: {country: Japan}
    reference: Tokyo
  - id: pe
    vars: {country: Peru}
    reference: Lima
"""


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright (which never downloads a browser of its own here).

    One per session: Playwright's sync API runs one event loop per thread, so every browser
    test shares this one.
    """
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing; install it with: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()
