"""Command line and ini options, resolved once into a frozen :class:`Settings`.

Precedence is CLI > environment > ini > default, decided here and nowhere else. Every bad
value is a :class:`pytest.UsageError` that names the value, what is allowed and the flag or
ini key that fixes it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_distill.roles import ROLES, Endpoint, RoleConfig, parse_endpoint

RECORD_MODES = ("none", "once", "new_episodes", "all", "off")
SETTINGS_KEY = pytest.StashKey["Settings"]()

DEFAULT_PATTERNS = ("*.eval.yaml", "*.eval.yml", "*.eval.jsonl")
RUN_ROLES = ("teacher", "student", "finetuned")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per one million tokens."""

    prompt: float
    completion: float


@dataclass(frozen=True, slots=True)
class TrainingOptions:
    trainer_endpoint: Endpoint | None = None  # None: the student's endpoint
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    suffix: str = "distill"
    seed: int | None = None
    poll_interval: float = 2.0
    job_timeout: float = 3600.0
    max_example_tokens: int = 4096
    store: bool = False


@dataclass(frozen=True, slots=True)
class Settings:
    distill: bool
    no_wait: bool
    roles: tuple[str, ...]
    role_configs: Mapping[str, RoleConfig]
    concurrency: int
    report_path: Path | None
    gate: str | None
    holdout: float
    patterns: tuple[str, ...]
    prices: Mapping[str, Price] = field(default_factory=dict)
    local_models: Mapping[str, str] = field(default_factory=dict)
    training: TrainingOptions = field(default_factory=lambda: TrainingOptions())
    timeout: float | None = None  # None: 120 s, or 900 s on the embedded server
    max_retries: int = 2
    rootpath: Path = Path()
    record_mode: str | None = None  # None: live traffic, nothing recorded
    cassette_dir: Path = Path("cassettes")


def addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("distill", "eval-driven model distillation (pytest-distill)")
    group.addoption(
        "--distill",
        action="store_true",
        default=None,
        help="after the teacher items run, build the training set from passing teacher "
        "outputs, fine-tune the student, evaluate it on the holdout and apply the gate.",
    )
    group.addoption(
        "--distill-no-wait",
        action="store_true",
        default=None,
        help="with --distill: start the fine-tuning job and return; the next run picks it up.",
    )
    group.addoption(
        "--distill-roles",
        default=None,
        metavar="ROLES",
        help="comma-separated roles to run eval items for, from teacher, student, finetuned "
        "(default: every role with a model; ini: distill_roles).",
    )
    group.addoption(
        "--distill-model",
        action="append",
        default=None,
        metavar="ROLE=MODEL",
        help="model id for a role, e.g. teacher=gpt-4.1 (repeatable; "
        "env DISTILL_<ROLE>_MODEL; ini distill_<role>_model).",
    )
    group.addoption(
        "--distill-endpoint",
        action="append",
        default=None,
        metavar="ROLE=ENDPOINT",
        help="endpoint for a role: 'openai', 'local' (the embedded server) or a base URL "
        "(repeatable; env DISTILL_<ROLE>_ENDPOINT; ini distill_<role>_endpoint).",
    )
    group.addoption(
        "--distill-concurrency",
        default=None,
        metavar="N",
        help="model calls in flight at once for data-file cases (default 8; "
        "ini distill_concurrency).",
    )
    group.addoption(
        "--distill-report",
        default=None,
        metavar="PATH",
        help="write the JSON report (schema pytest-distill/report/1) to PATH (ini distill_report).",
    )
    group.addoption(
        "--distill-gate",
        default=None,
        metavar="EXPR",
        help="deploy gate over role scores, e.g. 'finetuned >= 0.95 * teacher'; a failing "
        "gate ends the session with exit code 6 (ini distill_gate).",
    )
    group.addoption(
        "--distill-holdout",
        default=None,
        metavar="FRACTION",
        help="share of cases held out from training, by a stable hash of the case id "
        "(default 0.2; ini distill_holdout).",
    )
    group.addoption(
        "--distill-record-mode",
        default=None,
        choices=RECORD_MODES,
        help="replay and record model traffic in cassettes: none (replay only, no network), "
        "once, new_episodes, all (re-record) or off (live, nothing recorded); default none "
        "when the CI environment variable is set, else off (ini distill_record_mode).",
    )

    parser.addini("distill_roles", "roles to run eval items for (comma-separated)", default="")
    parser.addini("distill_concurrency", "model calls in flight at once", default="8")
    parser.addini("distill_report", "path of the JSON report", default="")
    parser.addini("distill_gate", "deploy gate expression over role scores", default="")
    parser.addini("distill_holdout", "share of cases held out from training", default="0.2")
    parser.addini(
        "distill_patterns", "glob patterns of eval files", type="args", default=DEFAULT_PATTERNS
    )
    parser.addini(
        "distill_prices",
        "lines 'MODEL = PROMPT COMPLETION': USD per 1M tokens, for the cost column",
        type="linelist",
        default=[],
    )
    parser.addini(
        "distill_local_models",
        "lines 'ID = PATH': models the embedded server serves (HF directory or .gguf file)",
        type="linelist",
        default=[],
    )
    parser.addini(
        "distill_trainer_endpoint",
        "endpoint that fine-tunes: openai, local or a base URL (default: the student's)",
        default="",
    )
    for name, help_text in (
        ("n_epochs", "fine-tuning epochs (default: the trainer's choice)"),
        ("batch_size", "fine-tuning batch size (default: the trainer's choice)"),
        ("learning_rate_multiplier", "fine-tuning learning-rate multiplier"),
    ):
        parser.addini(f"distill_{name}", help_text, default="")
    parser.addini("distill_suffix", "suffix of the fine-tuned model's name", default="distill")
    parser.addini("distill_seed", "seed of the fine-tuning job", default="")
    parser.addini("distill_poll_interval", "seconds between job polls", default="2")
    parser.addini("distill_job_timeout", "seconds to follow a job before giving up", default="3600")
    parser.addini(
        "distill_max_example_tokens",
        "training examples over this many (estimated) tokens are dropped",
        default="4096",
    )
    parser.addini(
        "distill_store",
        "send teacher calls with store: true and metadata",
        type="bool",
        default=False,
    )
    parser.addini(
        "distill_record_mode", "none, once, new_episodes, all or off (see --distill-record-mode)"
    )
    parser.addini(
        "distill_cassette_dir", "directory of the cassettes, from the rootdir", default="cassettes"
    )
    parser.addini(
        "distill_timeout",
        "seconds before a model call times out (default 120; 900 on the embedded server)",
        default="",
    )
    parser.addini("distill_max_retries", "retries of a failed model call", default="2")
    for role in ROLES:
        parser.addini(f"distill_{role}_model", f"model id of the {role} role", default="")
        parser.addini(
            f"distill_{role}_endpoint",
            f"endpoint of the {role} role: openai, local or a base URL",
            default="",
        )
        parser.addini(
            f"distill_{role}_params",
            f"sampling parameters of the {role} role, as KEY=VALUE (JSON values)",
            type="args",
            default=[],
        )
        parser.addini(
            f"distill_{role}_api_key_env",
            f"name of the environment variable holding the {role} role's API key",
            default="",
        )


def resolve(config: pytest.Config) -> Settings:
    """Read CLI, environment and ini once; raise UsageError on the first bad value."""
    cli_models = _pairs(config.getoption("distill_model"), "--distill-model", "ROLE=MODEL")
    cli_endpoints = _pairs(
        config.getoption("distill_endpoint"), "--distill-endpoint", "ROLE=ENDPOINT"
    )
    role_configs = {
        role: _role_config(config, role, cli_models.get(role), cli_endpoints.get(role))
        for role in ROLES
    }
    return Settings(
        distill=bool(config.getoption("distill")),
        no_wait=bool(config.getoption("distill_no_wait")),
        roles=_run_roles(config, role_configs),
        role_configs=role_configs,
        concurrency=_number(config, "concurrency", int, low=1),
        report_path=_path(config, "report"),
        gate=_gate(config),
        holdout=_number(config, "holdout", float, low=0.0, high=0.9),
        patterns=tuple(config.getini("distill_patterns")),
        prices=_prices(config.getini("distill_prices")),
        local_models=_local_models(config),
        training=_training(config),
        timeout=_optional_timeout(config),
        max_retries=_ini_number(config, "distill_max_retries", int, low=0),
        rootpath=config.rootpath,
        record_mode=_record_mode(config),
        cassette_dir=config.rootpath / str(config.getini("distill_cassette_dir")).strip(),
    )


def _record_mode(config: pytest.Config) -> str | None:
    text = _cli_or_ini(config, "record_mode")
    if not text:
        # Recording is always an explicit choice; CI replays unless told otherwise.
        return "none" if os.environ.get("CI") else None
    if text not in RECORD_MODES:
        raise pytest.UsageError(
            f"ini distill_record_mode: {text!r} is not a record mode; use one of "
            f"{', '.join(RECORD_MODES)} (or --distill-record-mode)"
        )
    return None if text == "off" else text


def _cli_or_ini(config: pytest.Config, name: str) -> str:
    value = config.getoption(f"distill_{name}")
    if value is None:
        value = config.getini(f"distill_{name}")
    return str(value).strip()


def _pairs(values: Sequence[str] | None, flag: str, shape: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values or ():
        role, sep, rest = value.partition("=")
        if not sep or role not in ROLES or not rest:
            raise pytest.UsageError(
                f"{flag} {value!r}: expected {shape} with ROLE one of {', '.join(ROLES)}; "
                f"for example {flag} teacher=..."
            )
        pairs[role] = rest
    return pairs


def _role_config(
    config: pytest.Config, role: str, cli_model: str | None, cli_endpoint: str | None
) -> RoleConfig:
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
    if role == "finetuned" and not str(model).strip():
        found = finetuned_from_state(config.rootpath)
        if found is not None:
            model, endpoint = found[0], parse_endpoint(found[1])
    return RoleConfig(
        name=role,
        model=str(model).strip() or None,
        endpoint=endpoint,
        params=_params(config.getini(f"distill_{role}_params"), f"distill_{role}_params"),
        api_key_env=key_env,
    )


def _params(items: Sequence[str], key: str) -> dict[str, Any]:
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
    return params


def _run_roles(config: pytest.Config, role_configs: Mapping[str, RoleConfig]) -> tuple[str, ...]:
    text = _cli_or_ini(config, "roles")
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


def _number(config: pytest.Config, name: str, kind: type, *, low: float, high: float = 1e9) -> Any:
    raw = _cli_or_ini(config, name)
    where = f"--distill-{name} / ini distill_{name}"
    return _checked(raw, kind, low, high, where)


def _ini_number(config: pytest.Config, key: str, kind: type, *, low: float) -> Any:
    return _checked(str(config.getini(key)).strip(), kind, low, 1e9, f"ini {key}")


def _checked(raw: str, kind: type, low: float, high: float, where: str) -> Any:
    noun = "a whole number" if kind is int else "a number"
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        bound = f">= {low:g}" if high >= 1e9 else f"from {low:g} to {high:g}"
        raise pytest.UsageError(f"{where}: {raw!r} is not valid; use {noun} {bound}")
    return value


def _path(config: pytest.Config, name: str) -> Path | None:
    raw = _cli_or_ini(config, name)
    if not raw:
        return None
    return Path(config.invocation_params.dir, raw)


def _prices(lines: Sequence[str]) -> dict[str, Price]:
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


def _local_models(config: pytest.Config) -> dict[str, str]:
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


def _gate(config: pytest.Config) -> str | None:
    from pytest_distill.verdict.gate import Gate, GateSyntaxError

    text = _cli_or_ini(config, "gate")
    if not text:
        return None
    try:
        Gate.parse(text)
    except GateSyntaxError as exc:
        raise pytest.UsageError(f"--distill-gate / ini distill_gate: {exc}") from None
    return text


def _training(config: pytest.Config) -> TrainingOptions:
    trainer = config.getini("distill_trainer_endpoint").strip()
    try:
        endpoint = parse_endpoint(trainer) if trainer else None
    except ValueError as exc:
        raise pytest.UsageError(f"ini distill_trainer_endpoint: {exc}") from None
    hyper = {}
    for name, kind in (("n_epochs", int), ("batch_size", int), ("learning_rate_multiplier", float)):
        raw = str(config.getini(f"distill_{name}")).strip()
        if raw and raw != "auto":
            hyper[name] = _checked(raw, kind, 1e-9, 1e9, f"ini distill_{name}")
    seed = str(config.getini("distill_seed")).strip()
    return TrainingOptions(
        trainer_endpoint=endpoint,
        hyperparameters=hyper,
        suffix=str(config.getini("distill_suffix")).strip() or "distill",
        seed=_checked(seed, int, 0, 2**31, "ini distill_seed") if seed else None,
        poll_interval=_ini_number(config, "distill_poll_interval", float, low=0.0),
        job_timeout=_ini_number(config, "distill_job_timeout", float, low=1.0),
        max_example_tokens=_ini_number(config, "distill_max_example_tokens", int, low=16),
        store=bool(config.getini("distill_store")),
    )


def finetuned_from_state(rootpath: Path) -> tuple[str, str] | None:
    """The model a past ``--distill`` run trained, and its endpoint, from .distill/state.json."""
    try:
        data = json.loads((rootpath / ".distill" / "state.json").read_text())
        found = data["finetuned"]
        return str(found["model"]), str(found["endpoint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _optional_timeout(config: pytest.Config) -> float | None:
    raw = str(config.getini("distill_timeout")).strip()
    return _checked(raw, float, 0.1, 1e9, "ini distill_timeout") if raw else None
