"""The one answer to "which process of an xdist session is this"."""

from __future__ import annotations

from typing import Any, cast

import pytest

from pytest_distill import xdist


class FakePlugins:
    def __init__(self, *names: str) -> None:
        self.names = names

    def has_plugin(self, name: str) -> bool:
        return name in self.names


class FakeConfig:
    def __init__(self, *plugins: str, numprocesses: Any = None, **attributes: Any) -> None:
        self.pluginmanager = FakePlugins(*plugins)
        self.numprocesses = numprocesses
        self.__dict__.update(attributes)

    def getoption(self, name: str, default: Any = None) -> Any:
        return self.numprocesses if name == "numprocesses" else default


def config(*plugins: str, **attributes: Any) -> pytest.Config:
    return cast(pytest.Config, FakeConfig(*plugins, **attributes))


def test_a_single_process_session_is_neither_worker_nor_controller_and_is_primary() -> None:
    plain = config()
    assert not xdist.is_worker(plain)
    assert xdist.worker_id(plain) is None
    assert xdist.is_primary(plain)
    assert not xdist.is_controller(plain)
    assert not xdist.starts_workers(plain)


@pytest.mark.parametrize(
    ("workerinput", "wid", "primary"),
    [
        ({"workerid": "gw0"}, "gw0", True),
        ({"workerid": "gw3"}, "gw3", False),
        ({}, "gw0", True),
    ],
)
def test_a_worker_knows_its_id_and_whether_it_is_the_first(
    workerinput: dict[str, str], wid: str, primary: bool
) -> None:
    worker = config(workerinput=workerinput, numprocesses=2)
    assert xdist.is_worker(worker)
    assert xdist.worker_id(worker) == wid
    assert xdist.is_primary(worker) is primary
    assert not xdist.starts_workers(worker)  # its -n is the controller's, not a request


def test_the_controller_starts_workers_and_then_distributes() -> None:
    assert xdist.starts_workers(config(numprocesses=2))
    assert not xdist.starts_workers(config(numprocesses=0))  # -n 0: one process
    controller = config("dsession", numprocesses=2)
    assert xdist.is_controller(controller)
    assert not xdist.is_worker(controller)
    assert xdist.is_primary(controller)
