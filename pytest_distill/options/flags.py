"""Every command-line flag and ini key of the plugin, in one ``distill`` group.

CLI defaults are ``None`` so that "not given" stays visible; :func:`pytest_distill.options.resolve`
decides precedence.
"""

from __future__ import annotations

import pytest

from pytest_distill.options.settings import DEFAULT_PATTERNS, RECORD_MODES
from pytest_distill.roles import ROLES


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
        "--distill-allow-subset",
        action="store_true",
        default=None,
        help="with --distill: train even when a selection (-k, --lf, --deselect, node ids, "
        "--distill-roles) left train-split teacher cases out (ini distill_allow_subset).",
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
        help="write the JSON report (schema pytest-distill/report/2) to PATH (ini distill_report).",
    )
    group.addoption(
        "--distill-html",
        default=None,
        metavar="PATH",
        help="write the HTML report, one self-contained file, to PATH (ini distill_html).",
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
        "--distill-repeats",
        default=None,
        metavar="N",
        help="run each case N times per role (one item records the N outcomes); the case's "
        "score is their mean, and pass_k / pass_at_k join the gate's attributes "
        "(default 1; ini distill_repeats).",
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
    parser.addini("distill_html", "path of the HTML report", default="")
    parser.addini(
        "distill_summary_cases",
        "the CI job summary ($GITHUB_STEP_SUMMARY) shows the regressed cases' prompts and replies",
        type="bool",
        default=False,
    )
    parser.addini("distill_gate", "deploy gate expression over role scores", default="")
    parser.addini("distill_holdout", "share of cases held out from training", default="0.2")
    parser.addini("distill_repeats", "times each case runs per role", default="1")
    parser.addini(
        "distill_confidence",
        "confidence of the gate's intervals and non-inferiority bounds",
        default="0.95",
    )
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
        "distill_local_device",
        "where the embedded server runs and trains models: auto, cpu or cuda",
        default="auto",
    )
    parser.addini(
        "distill_trainer_extra_body",
        "JSON object merged into the fine-tuning job create (e.g. Azure's trainingType)",
        default="",
    )
    parser.addini(
        "distill_trainer_api_key_env",
        "name of the environment variable holding the trainer endpoint's API key",
        default="",
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
        "distill_allow_subset",
        "train on the teacher cases a selection left in (see --distill-allow-subset)",
        type="bool",
        default=False,
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
            f"sampling parameters of the {role} role: KEY=VALUE pairs with JSON values, "
            "separated by spaces or new lines",
            type="linelist",
            default=[],
        )
        parser.addini(
            f"distill_{role}_api_key_env",
            f"name of the environment variable holding the {role} role's API key",
            default="",
        )
