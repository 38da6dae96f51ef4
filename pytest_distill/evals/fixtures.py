"""Fixtures for Python evals: a client per role, and one parametrized over the run's roles."""

from __future__ import annotations

import pytest

from pytest_distill.roles import RoleClient
from pytest_distill.runtime import RUNTIME_KEY

CLIENTS_KEY = pytest.StashKey[list[RoleClient]]()


def role_client(request: pytest.FixtureRequest, role: str) -> RoleClient:
    runtime = request.config.stash[RUNTIME_KEY]
    config = runtime.role(role)
    if not config.model:
        pytest.skip(
            f"role {role!r} has no model (set ini distill_{role}_model or "
            f"--distill-model {role}=MODEL)"
        )
    client = RoleClient(config, runtime.client(role))
    request.node.stash.setdefault(CLIENTS_KEY, []).append(client)
    return client


@pytest.fixture
def teacher(request: pytest.FixtureRequest) -> RoleClient:
    """A client for the teacher role (the large model)."""
    return role_client(request, "teacher")


@pytest.fixture
def student(request: pytest.FixtureRequest) -> RoleClient:
    """A client for the student role (the small model, before fine-tuning)."""
    return role_client(request, "student")


@pytest.fixture
def finetuned(request: pytest.FixtureRequest) -> RoleClient:
    """A client for the fine-tuned student; skips the test while there is none."""
    return role_client(request, "finetuned")


@pytest.fixture
def distill_client(request: pytest.FixtureRequest, distill_role: str) -> RoleClient:
    """A client for each role of the run: the test runs once per role (``test[teacher]`` ...)."""
    return role_client(request, distill_role)
