"""Parsing one option's value: numbers in range, paths, choices, prices, local models.

Each parser takes the value as given (:class:`~pytest_distill.options.option.Given`). Every bad
value is a :class:`pytest.UsageError` naming the value, what is allowed and the key.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_distill.options.option import Given, Parse
from pytest_distill.options.settings import BATCH_PRICE_FACTOR, Price, Prices


def switch(given: Given) -> bool:
    return bool(given.value)


def text(given: Given) -> str:
    return given.text


def text_or_none(given: Given) -> str | None:
    return given.text or None


def number(kind: type, low: float, high: float = 1e9) -> Parse:
    """A number of ``kind`` from ``low`` to ``high``."""

    def parse(given: Given) -> Any:
        return checked(given.text, kind, low, high, given.where)

    return parse


def number_or_none(kind: type, low: float) -> Parse:
    """A number of ``kind`` from ``low``, or None when blank."""

    def parse(given: Given) -> Any:
        return checked(given.text, kind, low, 1e9, given.where) if given.text else None

    return parse


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


def record_mode(given: Given) -> str | None:
    text, modes = given.text, given.option.choices or ()
    if not text:
        # Recording is always an explicit choice; CI replays unless told otherwise.
        return "none" if os.environ.get("CI") else None
    if text not in modes:
        raise pytest.UsageError(
            f"ini {given.ini_key}: {text!r} is not a record mode; use one of "
            f"{', '.join(modes)} (or {given.option.flag})"
        )
    return None if text == "off" else text


def path(given: Given) -> Path | None:
    """A path from the directory pytest was invoked in; None when blank."""
    return Path(given.invocation_dir, given.text) if given.text else None


def under_rootdir(given: Given) -> Path:
    return given.rootpath / given.text


def strings(given: Given) -> tuple[str, ...]:
    return tuple(given.value)


def price_lines(given: Given) -> Prices:
    return prices(given.value)


def prices(lines: Sequence[str]) -> Prices:
    """``MODEL = PROMPT COMPLETION`` lines (USD per million tokens), and ``batch = FACTOR``:
    the share of the price a call answered through a Batch API batch costs (default 0.5)."""
    found: dict[str, Price] = {}
    batch = BATCH_PRICE_FACTOR
    for line in lines:
        model, sep, rest = line.partition("=")
        numbers = rest.split()
        if sep and model.strip() == "batch" and len(numbers) == 1:
            try:
                batch = float(numbers[0])
                if not 0 <= batch < float("inf"):
                    raise ValueError
            except ValueError:
                raise pytest.UsageError(
                    f"ini distill_prices: {line!r}: the batch factor is a number from 0 (the "
                    "share of the price a Batch API call costs), e.g. 'batch = 0.5'"
                ) from None
            continue
        try:
            if not sep or len(numbers) != 2:
                raise ValueError
            found[model.strip()] = Price(float(numbers[0]), float(numbers[1]))
        except ValueError:
            raise pytest.UsageError(
                f"ini distill_prices: {line!r} is not 'MODEL = PROMPT COMPLETION'; write USD "
                "per million tokens, e.g. 'gpt-4.1-mini = 0.40 1.60' (or 'batch = 0.5', the "
                "share of the price a Batch API call costs)"
            ) from None
    return Prices(found, batch)


def local_models(given: Given) -> dict[str, str]:
    models: dict[str, str] = {}
    for line in given.value:
        model, sep, path = line.partition("=")
        if not sep or not model.strip() or not path.strip():
            raise pytest.UsageError(
                f"{given.where}: {line!r} is not 'ID = PATH'; write e.g. "
                "'my-model = models/my-model' (a Hugging Face directory or a .gguf file)"
            )
        models[model.strip()] = str(given.rootpath / path.strip())
    return models


def local_device(given: Given) -> str:
    devices = given.option.choices or ()
    text = given.text.lower() or devices[0]
    if text not in devices:
        raise pytest.UsageError(
            f"{given.where}: {text!r} is not a device; use "
            f"{', '.join(devices[:-1])} or {devices[-1]}"
        )
    return text
