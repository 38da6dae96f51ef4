"""Command line and ini options, resolved once into a frozen :class:`Settings`.

Precedence is CLI > environment > ini > default, decided here and nowhere else. Every bad
value is a :class:`pytest.UsageError` that names the value, what is allowed and the flag or
ini key that fixes it. ``flags`` declares the options; ``values``, ``role_options`` and
``training`` read them.
"""

from __future__ import annotations

import pytest

from pytest_distill.options.flags import addoption
from pytest_distill.options.role_options import role_config, run_roles
from pytest_distill.options.settings import (
    DEFAULT_PATTERNS,
    RECORD_MODES,
    RUN_ROLES,
    Price,
    Settings,
    TrainingOptions,
)
from pytest_distill.options.training import training
from pytest_distill.options.values import (
    checked,
    cli_or_ini,
    ini_number,
    local_device,
    local_models,
    number,
    optional_timeout,
    pairs,
    path,
    prices,
    record_mode,
)
from pytest_distill.roles import ROLES

__all__ = [
    "DEFAULT_PATTERNS",
    "RECORD_MODES",
    "RUN_ROLES",
    "Price",
    "Settings",
    "TrainingOptions",
    "addoption",
    "resolve",
]


def resolve(config: pytest.Config, trained: tuple[str, str] | None = None) -> Settings:
    """Read CLI, environment and ini once; raise UsageError on the first bad value.

    ``trained`` is the fine-tuned model (and its endpoint) that an earlier ``--distill`` run
    left in ``.distill/state.json``: the ``finetuned`` role's model unless one is configured.
    """
    cli_models = pairs(config.getoption("distill_model"), "--distill-model", "ROLE=MODEL")
    cli_endpoints = pairs(
        config.getoption("distill_endpoint"), "--distill-endpoint", "ROLE=ENDPOINT"
    )
    role_configs = {
        role: role_config(config, role, cli_models.get(role), cli_endpoints.get(role), trained)
        for role in ROLES
    }
    return Settings(
        distill=bool(config.getoption("distill")),
        no_wait=bool(config.getoption("distill_no_wait")),
        roles=run_roles(config, role_configs),
        role_configs=role_configs,
        concurrency=number(config, "concurrency", int, low=1),
        report_path=path(config, "report"),
        gate=cli_or_ini(config, "gate") or None,
        holdout=number(config, "holdout", float, low=0.0, high=0.9),
        patterns=tuple(config.getini("distill_patterns")),
        prices=prices(config.getini("distill_prices")),
        local_models=local_models(config),
        local_device=local_device(config),
        training=training(config),
        timeout=optional_timeout(config),
        max_retries=ini_number(config, "distill_max_retries", int, low=0),
        rootpath=config.rootpath,
        record_mode=record_mode(config),
        cassette_dir=config.rootpath / str(config.getini("distill_cassette_dir")).strip(),
        html_path=path(config, "html"),
        summary_cases=bool(config.getini("distill_summary_cases")),
        repeats=number(config, "repeats", int, low=1, high=100),
        confidence=checked(
            str(config.getini("distill_confidence")).strip(),
            float,
            0.5,
            0.999,
            "ini distill_confidence",
        ),
    )
