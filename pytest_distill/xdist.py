"""Which process of a pytest-xdist session this is: a worker, the controller, or neither.

Every question about xdist asks here, so the answer is read one way. Without ``-n``/``--dist``
a session is one process, neither a worker nor a controller. Under xdist the controller
collects nothing and sees every worker's reports; each worker collects and runs its share.
"""

from __future__ import annotations

import pytest


def is_worker(config: pytest.Config) -> bool:
    """An xdist worker (xdist gives a worker's config ``workerinput``)."""
    return hasattr(config, "workerinput")


def worker_id(config: pytest.Config) -> str | None:
    """The worker's id (``gw0``, ``gw1``, ...), or None outside a worker."""
    if not is_worker(config):
        return None
    workerid: str = config.workerinput.get("workerid", "gw0")  # type: ignore[attr-defined]
    return workerid


def is_primary(config: pytest.Config) -> bool:
    """Not a worker, or the first one: the process that writes what every worker would."""
    return worker_id(config) in (None, "gw0")


def is_controller(config: pytest.Config) -> bool:
    """The controller of a distributed run: its workers collect and run the items.

    Known once xdist's own ``pytest_configure`` has run (it registers its session last); in
    ``pytest_configure`` ask ``starts_workers``.
    """
    return config.pluginmanager.has_plugin("dsession")


def starts_workers(config: pytest.Config) -> bool:
    """Not a worker, and ``-n`` asks for workers; answerable in ``pytest_configure``."""
    return bool(config.getoption("numprocesses", None)) and not is_worker(config)
