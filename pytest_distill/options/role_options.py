"""Role settings: model, endpoint, sampling parameters and key variable of each role."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
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


def params(lines: Sequence[str], key: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs, several on a line or one a line; a value is read as JSON when it is
    JSON (``stop=["END"]``, ``response_format={"type": "json_object"}``, spaces allowed
    inside), else it is the text up to the next space."""
    params: dict[str, Any] = {}
    for line in lines:
        for name, value in _pairs(line, key):
            params[name] = value
    try:
        check_params(params, f"ini {key}")
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    return params


_JSON = json.JSONDecoder()


def _pairs(line: str, key: str) -> Iterator[tuple[str, Any]]:
    at = _skip_space(line, 0)
    while at < len(line):
        name, sep, _ = line[at:].partition("=")
        if not sep or not name or any(c.isspace() for c in name):
            word = line[at:].split(None, 1)[0]
            raise pytest.UsageError(
                f"ini {key}: {word!r} is not KEY=VALUE; write e.g. {key} = temperature=0 "
                'max_tokens=64 stop=["END"] (values are JSON)'
            )
        value, at = _value(line, at + len(name) + 1)
        yield name, value
        at = _skip_space(line, at)


def _value(line: str, start: int) -> tuple[Any, int]:
    """The value starting at ``start`` and where it ends: JSON when it parses up to a space."""
    try:
        value, end = _JSON.raw_decode(line, start)
    except json.JSONDecodeError:
        pass
    else:
        if end == len(line) or line[end].isspace():
            return value, end
    if line.startswith("'", start) and "'" in line[start + 1 :]:  # shell-style 'quoted text'
        end = line.index("'", start + 1)
        return line[start + 1 : end], end + 1
    word = "" if start == len(line) or line[start].isspace() else line[start:].split(None, 1)[0]
    return word, start + len(word)


def _skip_space(line: str, at: int) -> int:
    while at < len(line) and line[at].isspace():
        at += 1
    return at


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
