from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_model import create_tiny_model

    from distill_server.models import ModelUnavailable

    try:
        return create_tiny_model(tmp_path_factory.mktemp("tiny-model"))
    except ModelUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def dashboard_server(tmp_path: Path, tiny_model: Path) -> Iterator[Any]:
    from distill_server import LocalServer

    with LocalServer(tmp_path / "server", models={"tiny": tiny_model}) as srv:
        yield srv
