"""Reading one option: CLI or ini, numbers in range, paths, prices, local models.

Every bad value is a :class:`pytest.UsageError` naming the value, what is allowed and the key.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_distill.options.settings import RECORD_MODES, Price
from pytest_distill.roles import ROLES


def record_mode(config: pytest.Config) -> str | None:
    text = cli_or_ini(config, "record_mode")
    if not text:
        # Recording is always an explicit choice; CI replays unless told otherwise.
        return "none" if os.environ.get("CI") else None
    if text not in RECORD_MODES:
        raise pytest.UsageError(
            f"ini distill_record_mode: {text!r} is not a record mode; use one of "
            f"{', '.join(RECORD_MODES)} (or --distill-record-mode)"
        )
    return None if text == "off" else text


def cli_or_ini(config: pytest.Config, name: str) -> str:
    value = config.getoption(f"distill_{name}")
    if value is None:
        value = config.getini(f"distill_{name}")
    return str(value).strip()


def pairs(values: Sequence[str] | None, flag: str, shape: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values or ():
        role, sep, rest = value.partition("=")
        if not sep or role not in ROLES or not rest:
            close = difflib.get_close_matches(role, ROLES, n=1) if role not in ROLES else []
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise pytest.UsageError(
                f"{flag} {value!r}: {hint}expected {shape} with ROLE one of {', '.join(ROLES)}; "
                f"for example {flag} {close[0] if close else 'teacher'}=..."
            )
        pairs[role] = rest
    return pairs


def number(config: pytest.Config, name: str, kind: type, *, low: float, high: float = 1e9) -> Any:
    raw = cli_or_ini(config, name)
    where = f"--distill-{name} / ini distill_{name}"
    return checked(raw, kind, low, high, where)


def ini_number(config: pytest.Config, key: str, kind: type, *, low: float) -> Any:
    return checked(str(config.getini(key)).strip(), kind, low, 1e9, f"ini {key}")


def checked(raw: str, kind: type, low: float, high: float, where: str) -> Any:
    noun = "a whole number" if kind is int else "a number"
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        bound = f">= {low:g}" if high >= 1e9 else f"from {low:g} to {high:g}"
        raise pytest.UsageError(f"{where}: {raw!r} is not valid; use {noun} {bound}")
    return value


def path(config: pytest.Config, name: str) -> Path | None:
    raw = cli_or_ini(config, name)
    if not raw:
        return None
    return Path(config.invocation_params.dir, raw)


def prices(lines: Sequence[str]) -> dict[str, Price]:
    prices: dict[str, Price] = {}
    for line in lines:
        model, sep, rest = line.partition("=")
        numbers = rest.split()
        try:
            if not sep or len(numbers) != 2:
                raise ValueError
            prices[model.strip()] = Price(float(numbers[0]), float(numbers[1]))
        except ValueError:
            raise pytest.UsageError(
                f"ini distill_prices: {line!r} is not 'MODEL = PROMPT COMPLETION'; write USD "
                "per million tokens, e.g. 'gpt-4.1-mini = 0.40 1.60'"
            ) from None
    return prices


def local_models(config: pytest.Config) -> dict[str, str]:
    models: dict[str, str] = {}
    for line in config.getini("distill_local_models"):
        model, sep, path = line.partition("=")
        if not sep or not model.strip() or not path.strip():
            raise pytest.UsageError(
                f"ini distill_local_models: {line!r} is not 'ID = PATH'; write e.g. "
                "'my-model = models/my-model' (a Hugging Face directory or a .gguf file)"
            )
        models[model.strip()] = str(config.rootpath / path.strip())
    return models


def local_device(config: pytest.Config) -> str:
    text = str(config.getini("distill_local_device")).strip().lower() or "auto"
    if text not in ("auto", "cpu", "cuda"):
        raise pytest.UsageError(
            f"ini distill_local_device: {text!r} is not a device; use auto, cpu or cuda"
        )
    return text


def optional_timeout(config: pytest.Config) -> float | None:
    raw = str(config.getini("distill_timeout")).strip()
    return checked(raw, float, 0.1, 1e9, "ini distill_timeout") if raw else None
