"""Training settings: the trainer endpoint, hyperparameters and how a job is followed.

The hyperparameters, the suffix and the seed are checked here, at start-up, against the ranges
of the fine-tuning API (``CreateFineTuningJobRequest`` in OpenAI's API description), so a bad
value stops pytest before any model call rather than after the eval run and the upload.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest

from pytest_distill.options.settings import TrainingOptions
from pytest_distill.options.values import ini_number
from pytest_distill.roles import parse_endpoint

# name -> (type, lowest, highest, lowest excluded); from the API's hyperparameter schema.
HYPERPARAMETERS: dict[str, tuple[type, float, float, bool]] = {
    "n_epochs": (int, 1, 50, False),
    "batch_size": (int, 1, 256, False),
    "learning_rate_multiplier": (float, 0, math.inf, True),
}
SEED_RANGE = (0, 2**31 - 1)
SUFFIX = re.compile(r"[A-Za-z0-9_-]{1,64}")


def training(config: pytest.Config) -> TrainingOptions:
    trainer = config.getini("distill_trainer_endpoint").strip()
    try:
        endpoint = parse_endpoint(trainer) if trainer else None
    except ValueError as exc:
        raise pytest.UsageError(f"ini distill_trainer_endpoint: {exc}") from None
    hyper: dict[str, int | float] = {}
    for name in HYPERPARAMETERS:
        raw = str(config.getini(f"distill_{name}")).strip()
        if raw and raw != "auto":
            hyper[name] = hyperparameter(name, raw)
    seed = str(config.getini("distill_seed")).strip()
    return TrainingOptions(
        trainer_endpoint=endpoint,
        hyperparameters=hyper,
        suffix=suffix(str(config.getini("distill_suffix")).strip() or "distill"),
        seed=whole(seed, *SEED_RANGE, "ini distill_seed") if seed else None,
        poll_interval=ini_number(config, "distill_poll_interval", float, low=0.0),
        job_timeout=ini_number(config, "distill_job_timeout", float, low=1.0),
        max_example_tokens=ini_number(config, "distill_max_example_tokens", int, low=16),
        store=bool(config.getini("distill_store")),
        extra_body=_extra_body(config),
        api_key_env=str(config.getini("distill_trainer_api_key_env")).strip() or None,
        allow_subset=bool(
            config.getoption("distill_allow_subset") or config.getini("distill_allow_subset")
        ),
    )


def _extra_body(config: pytest.Config) -> dict[str, Any]:
    raw = str(config.getini("distill_trainer_extra_body")).strip()
    try:
        value = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise pytest.UsageError(
            f"ini distill_trainer_extra_body: {raw!r} is not a JSON object; write e.g. "
            'distill_trainer_extra_body = {"trainingType": "GlobalStandard"}'
        )
    return value


def hyperparameter(name: str, raw: str) -> int | float:
    kind, low, high, open_low = HYPERPARAMETERS[name]
    if kind is int:
        return whole(raw, int(low), int(high), f"ini distill_{name}")
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and (value > low if open_low else value >= low)):
        raise pytest.UsageError(
            f"ini distill_{name}: {raw!r} is not valid; the fine-tuning API takes a number "
            f"greater than {low:g}, or auto"
        )
    return value


def whole(raw: str, low: int, high: int, where: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise pytest.UsageError(
            f"{where}: {raw!r} is not valid; the fine-tuning API takes a whole number "
            f"from {low} to {high}"
            + (", or auto" if where.endswith(tuple(HYPERPARAMETERS)) else "")
        )
    return value


def suffix(raw: str) -> str:
    if not SUFFIX.fullmatch(raw):
        raise pytest.UsageError(
            f"ini distill_suffix: {raw!r} is not valid; the fine-tuning API takes 1 to 64 "
            "characters, and a model name keeps to letters, digits, '-' and '_'"
        )
    return raw
