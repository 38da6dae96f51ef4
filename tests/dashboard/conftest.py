from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


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
