"""Training settings: the trainer endpoint, hyperparameters and how a job is followed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pytest_distill.options.settings import TrainingOptions
from pytest_distill.options.values import checked, ini_number
from pytest_distill.roles import parse_endpoint


def training(config: pytest.Config) -> TrainingOptions:
    trainer = config.getini("distill_trainer_endpoint").strip()
    try:
        endpoint = parse_endpoint(trainer) if trainer else None
    except ValueError as exc:
        raise pytest.UsageError(f"ini distill_trainer_endpoint: {exc}") from None
    hyper = {}
    for name, kind in (("n_epochs", int), ("batch_size", int), ("learning_rate_multiplier", float)):
        raw = str(config.getini(f"distill_{name}")).strip()
        if raw and raw != "auto":
            hyper[name] = checked(raw, kind, 1e-9, 1e9, f"ini distill_{name}")
    seed = str(config.getini("distill_seed")).strip()
    return TrainingOptions(
        trainer_endpoint=endpoint,
        hyperparameters=hyper,
        suffix=str(config.getini("distill_suffix")).strip() or "distill",
        seed=checked(seed, int, 0, 2**31, "ini distill_seed") if seed else None,
        poll_interval=ini_number(config, "distill_poll_interval", float, low=0.0),
        job_timeout=ini_number(config, "distill_job_timeout", float, low=1.0),
        max_example_tokens=ini_number(config, "distill_max_example_tokens", int, low=16),
        store=bool(config.getini("distill_store")),
        extra_body=_extra_body(config),
        api_key_env=str(config.getini("distill_trainer_api_key_env")).strip() or None,
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
