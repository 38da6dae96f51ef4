"""Role settings: model, endpoint, sampling parameters and key variable of each role."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from pytest_distill.options.option import Given, Values
from pytest_distill.options.settings import RUN_ROLES
from pytest_distill.roles import Endpoint, RoleConfig, check_params, parse_endpoint


def role_config(read: Values, role: str, trained: tuple[str, str] | None = None) -> RoleConfig:
    """One role's settings; ``trained`` is the (model, endpoint) an earlier ``--distill`` made,
    used for ``finetuned`` when no model is configured.

    The fine-tuned model is the student after training, so it is called as the student is: its
    parameters are the student's, with its own ``distill_finetuned_params`` over them key by key.
    """
    model, endpoint = read("model", role), read("endpoint", role)
    key_env = read("api_key_env", role)
    params = read("params", role)
    if role == "finetuned":
        params = {**read("params", "student"), **params}
        if model is None and trained is not None:
            model, endpoint = trained[0], parse_endpoint(trained[1])
    return RoleConfig(name=role, model=model, endpoint=endpoint, params=params, api_key_env=key_env)


def endpoint(given: Given) -> Endpoint:
    """``openai`` (when blank), ``local`` or a base URL."""
    try:
        return parse_endpoint(str(given.value or "openai"))
    except ValueError as exc:
        raise pytest.UsageError(
            f"{exc}; set it with {given.flag}, {given.env} or ini {given.ini_key}"
        ) from None


def role_params(given: Given) -> dict[str, Any]:
    return params(given.value, str(given.ini_key))


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


def run_roles(given: Given) -> tuple[str, ...]:
    """The roles named (comma-separated); empty when none is: every role with a model runs."""
    roles = tuple(r.strip() for r in given.text.split(",") if r.strip())
    for role in roles:
        if role not in RUN_ROLES:
            raise pytest.UsageError(
                f"{given.where}: unknown role {role!r}; allowed: {', '.join(RUN_ROLES)}"
            )
    return roles
