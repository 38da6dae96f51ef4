"""Role settings: model, endpoint, sampling parameters and key variable of each role."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from pytest_distill.options.settings import RUN_ROLES
from pytest_distill.options.values import cli_or_ini
from pytest_distill.roles import RoleConfig, check_params, parse_endpoint


def role_config(
    config: pytest.Config,
    role: str,
    cli_model: str | None,
    cli_endpoint: str | None,
    trained: tuple[str, str] | None = None,
) -> RoleConfig:
    """One role's settings; ``trained`` is the (model, endpoint) an earlier ``--distill`` made,
    used for ``finetuned`` when no model is configured."""
    env = os.environ
    up = role.upper()
    model = cli_model or env.get(f"DISTILL_{up}_MODEL") or config.getini(f"distill_{role}_model")
    endpoint_text = (
        cli_endpoint
        or env.get(f"DISTILL_{up}_ENDPOINT")
        or config.getini(f"distill_{role}_endpoint")
        or "openai"
    )
    try:
        endpoint = parse_endpoint(endpoint_text)
    except ValueError as exc:
        raise pytest.UsageError(
            f"{exc}; set it with --distill-endpoint {role}=..., DISTILL_{up}_ENDPOINT "
            f"or ini distill_{role}_endpoint"
        ) from None
    key_env = config.getini(f"distill_{role}_api_key_env").strip() or None
    if role == "finetuned" and not str(model).strip() and trained is not None:
        model, endpoint = trained[0], parse_endpoint(trained[1])
    return RoleConfig(
        name=role,
        model=str(model).strip() or None,
        endpoint=endpoint,
        params=params(config.getini(f"distill_{role}_params"), f"distill_{role}_params"),
        api_key_env=key_env,
    )


def params(items: Sequence[str], key: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise pytest.UsageError(
                f"ini {key}: {item!r} is not KEY=VALUE; write e.g. {key} = temperature=0 "
                "max_tokens=64"
            )
        try:
            params[name] = json.loads(raw)
        except json.JSONDecodeError:
            params[name] = raw
    try:
        check_params(params, f"ini {key}")
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    return params


def run_roles(config: pytest.Config, role_configs: Mapping[str, RoleConfig]) -> tuple[str, ...]:
    text = cli_or_ini(config, "roles")
    if not text:
        return tuple(r for r in RUN_ROLES if role_configs[r].model)
    roles = tuple(r.strip() for r in text.split(",") if r.strip())
    for role in roles:
        if role not in RUN_ROLES:
            raise pytest.UsageError(
                f"--distill-roles / ini distill_roles: unknown role {role!r}; "
                f"allowed: {', '.join(RUN_ROLES)}"
            )
    return roles
