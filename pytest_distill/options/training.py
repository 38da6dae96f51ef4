"""Training settings: the trainer endpoint, hyperparameters and how a job is followed.

The hyperparameters, the suffix and the seed are checked here, at start-up, against the ranges
of the fine-tuning API (``CreateFineTuningJobRequest`` in OpenAI's API description), so a bad
value stops pytest before any model call rather than after the eval run and the upload.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import pytest

from distill_shapes.reinforcement import OPENAI_GRADERS
from pytest_distill.options.option import Given, Values
from pytest_distill.options.settings import TrainingSettings
from pytest_distill.roles import Endpoint, parse_endpoint

# name -> (type, lowest, highest, lowest excluded); from the API's hyperparameter schema.
HYPERPARAMETERS: dict[str, tuple[type, float, float, bool]] = {
    "n_epochs": (int, 1, 50, False),
    "batch_size": (int, 1, 256, False),
    "learning_rate_multiplier": (float, 0, math.inf, True),
}
# Hyperparameters of one method only: DPO's beta, in (0, 2].
METHOD_HYPERPARAMETERS: dict[str, tuple[type, float, float, bool]] = {"beta": (float, 0, 2, True)}
METHODS = ("sft", "dpo", "sft+dpo", "sft+rl")
SEED_RANGE = (0, 2**31 - 1)
SUFFIX = re.compile(r"[A-Za-z0-9_-]{1,64}")


def training(read: Values) -> TrainingSettings:
    trainer = read("trainer_endpoint")
    hyper = {name: read(name) for name in HYPERPARAMETERS}
    return TrainingSettings(
        trainer_endpoint=trainer,
        hyperparameters={name: value for name, value in hyper.items() if value is not None},
        suffix=read("suffix"),
        seed=read("seed"),
        poll_interval=read("poll_interval"),
        job_timeout=read("job_timeout"),
        max_example_tokens=read("max_example_tokens"),
        store=read("store"),
        extra_body=read("trainer_extra_body"),
        api_key_env=read("trainer_api_key_env"),
        allow_subset=read("allow_subset"),
        no_wait=read("no_wait"),
        method=read("method"),
        pair_samples=read("pair_samples"),
        pair_temperature=read("pair_temperature"),
        beta=read("beta"),
    )


def method(given: Given) -> str:
    """One of :data:`METHODS`; the flag's choices are checked by pytest, the ini's here."""
    text = given.text or str(given.option.default)
    if text not in METHODS:
        raise pytest.UsageError(
            f"{given.where}: {text!r} is not a training method; use one of {', '.join(METHODS)}"
        )
    return text


def openai_reward_refusal(grader: Mapping[str, Any]) -> str | None:
    """Why ``sft+rl`` cannot train on OpenAI with ``grader`` (a case's grader spec, or the
    job's grader JSON, ``multi`` included): the first grader whose type OpenAI's reinforcement
    jobs do not take, and the fix; None when they take them all."""
    inner = grader.get("graders") if grader.get("type") == "multi" else None
    for spec in inner.values() if isinstance(inner, Mapping) else (grader,):
        kind = str(spec.get("type"))
        if kind not in OPENAI_GRADERS:
            name = spec.get("name") or kind
            return (
                f"distill_method sft+rl: grader {name!r} (type {kind}) is not one OpenAI's "
                f"reinforcement fine-tuning takes ({', '.join(sorted(OPENAI_GRADERS))}); "
                "train on the embedded server (ini distill_trainer_endpoint = local) or grade "
                "with those types"
            )
    return None


def trainer_endpoint(given: Given) -> Endpoint | None:
    try:
        return parse_endpoint(given.text) if given.text else None
    except ValueError as exc:
        raise pytest.UsageError(f"{given.where}: {exc}") from None


def extra_body(given: Given) -> dict[str, Any]:
    raw = given.text
    try:
        value = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise pytest.UsageError(
            f"{given.where}: {raw!r} is not a JSON object; write e.g. "
            f'{given.ini_key} = {{"trainingType": "GlobalStandard"}}'
        )
    return value


def hyperparameter_or_auto(given: Given) -> int | float | None:
    """None (the trainer's choice) when blank or ``auto``."""
    raw = given.text
    return hyperparameter(given.option.name, raw) if raw and raw != "auto" else None


def seed(given: Given) -> int | None:
    return whole(given.text, *SEED_RANGE, given.where) if given.text else None


def suffix_or_default(given: Given) -> str:
    return suffix(given.text or str(given.option.default))


def hyperparameter(name: str, raw: str) -> int | float:
    kind, low, high, open_low = {**HYPERPARAMETERS, **METHOD_HYPERPARAMETERS}[name]
    if kind is int:
        return whole(raw, int(low), int(high), f"ini distill_{name}")
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and (value > low if open_low else value >= low) and value <= high):
        most = f" and at most {high:g}" if math.isfinite(high) else ""
        raise pytest.UsageError(
            f"ini distill_{name}: {raw!r} is not valid; the fine-tuning API takes a number "
            f"greater than {low:g}{most}, or auto"
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
