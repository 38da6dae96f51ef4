"""Command line, environment and ini options, resolved once into a frozen :class:`Settings`.

``table`` declares every option once (flag, ini key, variable, parser, help); ``addoption``
registers that table and ``resolve`` reads it. Precedence is CLI > environment > ini > default,
decided in :class:`~pytest_distill.options.option.Values` and nowhere else. Every bad value is a
:class:`pytest.UsageError` that names the value, what is allowed and the flag or ini key that
fixes it.
"""

from __future__ import annotations

import pytest

from pytest_distill.options import path_flags
from pytest_distill.options.option import Values, register
from pytest_distill.options.role_options import role_config
from pytest_distill.options.settings import (
    DEFAULT_PATTERNS,
    RECORD_MODES,
    RUN_ROLES,
    Price,
    Settings,
    TrainingSettings,
)
from pytest_distill.options.table import OPTIONS
from pytest_distill.options.training import training
from pytest_distill.roles import ROLES

__all__ = [
    "DEFAULT_PATTERNS",
    "RECORD_MODES",
    "RUN_ROLES",
    "Price",
    "Settings",
    "TrainingSettings",
    "addoption",
    "resolve",
]


def addoption(parser: pytest.Parser) -> None:
    """Every flag, in one ``distill`` group, and every ini key."""
    register(parser, OPTIONS)


def resolve(config: pytest.Config, trained: tuple[str, str] | None = None) -> Settings:
    """Read CLI, environment and ini once; raise UsageError on the first bad value.

    ``trained`` is the fine-tuned model (and its endpoint) that an earlier ``--distill`` run
    left in ``.distill/state.json``: the ``finetuned`` role's model unless one is configured,
    and unless the session replays its cassettes (record mode ``none``). A path flag given
    after a space that made pytest pick another rootdir is refused first.
    """
    path_flags.check(config, OPTIONS)
    return settings(Values(config, OPTIONS), trained)


def settings(read: Values, trained: tuple[str, str] | None = None) -> Settings:
    """The settings the declared options make, each read through ``read``."""
    record_mode = read("record_mode")
    if record_mode == "none":
        # A replay is the recorded run again: the model a live --distill left in this folder
        # was no part of it (a clean copy has none), and its items would have no recording.
        trained = None
    role_configs = {role: role_config(read, role, trained) for role in ROLES}
    roles = read("roles") or tuple(r for r in RUN_ROLES if role_configs[r].model)
    return Settings(
        distill=read("distill"),
        roles=roles,
        role_configs=role_configs,
        concurrency=read("concurrency"),
        report_path=read("report"),
        gate=read("gate"),
        holdout=read("holdout"),
        patterns=read("patterns"),
        prices=read("prices"),
        local_models=read("local_models"),
        local_device=read("local_device"),
        training=training(read),
        timeout=read("timeout"),
        max_retries=read("max_retries"),
        rootpath=read.rootpath,
        record_mode=record_mode,
        cassette_dir=read("cassette_dir"),
        html_path=read("html"),
        summary_cases=read("summary_cases"),
        repeats=read("repeats"),
        confidence=read("confidence"),
        batch_roles=tuple(read("batch")),
    )
