"""Reports, datasets and exports get the modes any new file or folder gets (0666 / 0777 less the
umask), not the owner-only modes of a temporary file."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from distill_server.export import _staged
from pytest_distill.atomic import write_atomic


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    mask: int = request.param
    before = os.umask(mask)
    try:
        yield mask
    finally:
        os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_atomic_write_follows_the_umask(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "reports" / "run.json"
    write_atomic(path, b"{}")
    assert path.read_bytes() == b"{}"
    assert mode(path) == 0o666 & ~umask
    assert mode(path.parent) == 0o777 & ~umask
    write_atomic(path, b"[]")  # a rewrite too
    assert mode(path) == 0o666 & ~umask
    assert [p.name for p in path.parent.iterdir()] == ["run.json"]  # no temporary file left


def test_a_failed_atomic_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        write_atomic(tmp_path / "x.json", "not bytes")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_an_export_folder_follows_the_umask(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "exports" / "student"
    with _staged(target) as staging:
        (staging / "adapter_config.json").write_text("{}")
    assert mode(target) == 0o777 & ~umask
    assert mode(target / "adapter_config.json") == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["student"]
