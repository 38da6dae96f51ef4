"""Every option of the plugin, declared once: its flag, ini key, variable, parser and help.

:func:`pytest_distill.options.addoption` registers this table with pytest and
:func:`pytest_distill.options.resolve` reads it; see :class:`~pytest_distill.options.option.Option`
for what a row means. The flags appear in ``--help`` in this order, then the ini keys (the
per-role ones last, role by role). A per-role ``ini_help`` names the role as ``{role}``.
"""

from __future__ import annotations

from pytest_distill.options import role_options, training, values
from pytest_distill.options.option import Option
from pytest_distill.options.settings import DEFAULT_PATTERNS, RECORD_MODES

OPTIONS: tuple[Option, ...] = (
    Option(
        "distill",
        values.switch,
        switch=True,
        flag_help="after the teacher items run, build the training set from passing teacher "
        "outputs, fine-tune the student, evaluate it on the holdout and apply the gate.",
    ),
    Option(
        "no_wait",
        values.switch,
        switch=True,
        flag_help="with --distill: start the fine-tuning job and return; with --distill-batch: "
        "submit the batches and return (their items are skipped). The same command run again "
        "picks them up.",
    ),
    Option(
        "allow_subset",
        values.switch,
        switch=True,
        flag_help="with --distill: train even when a selection (-k, --lf, --deselect, node ids, "
        "--distill-roles) left train-split teacher cases out (ini distill_allow_subset).",
        ini_help="train on the teacher cases a selection left in (see --distill-allow-subset)",
        ini_type="bool",
        default=False,
    ),
    Option(
        "roles",
        role_options.run_roles,
        metavar="ROLES",
        flag_help="comma-separated roles to run eval items for, from teacher, student, finetuned "
        "(default: every role with a model; ini: distill_roles).",
        ini_help="roles to run eval items for (comma-separated)",
    ),
    Option(
        "batch",
        role_options.run_roles,
        metavar="ROLES",
        flag_help="comma-separated roles whose data-file cases go through the Batch API (one "
        "batch per model, half the price of live calls, answered within 24 h) instead of live "
        "calls, e.g. teacher (ini distill_batch).",
        ini_help="roles whose data-file cases go through the Batch API (comma-separated)",
    ),
    Option(
        "model",
        values.text_or_none,
        per_role=True,
        env=True,
        metavar="ROLE=MODEL",
        flag_help="model id for a role, e.g. teacher=gpt-4.1 (repeatable; "
        "env DISTILL_<ROLE>_MODEL; ini distill_<role>_model).",
        ini_help="model id of the {role} role",
    ),
    Option(
        "endpoint",
        role_options.endpoint,
        per_role=True,
        env=True,
        metavar="ROLE=ENDPOINT",
        flag_help="endpoint for a role: 'openai', 'local' (the embedded server) or a base URL "
        "(repeatable; env DISTILL_<ROLE>_ENDPOINT; ini distill_<role>_endpoint).",
        ini_help="endpoint of the {role} role: openai, local or a base URL",
    ),
    Option(
        "params",
        role_options.role_params,
        per_role=True,
        ini_help="sampling parameters of the {role} role: KEY=VALUE pairs with JSON values, "
        "separated by spaces or new lines (finetuned's go over the student's)",
        ini_type="linelist",
        default=[],
    ),
    Option(
        "api_key_env",
        values.text_or_none,
        per_role=True,
        ini_help="name of the environment variable holding the {role} role's API key",
    ),
    Option(
        "concurrency",
        values.number(int, 1),
        metavar="N",
        flag_help="model calls in flight at once for data-file cases (default 8; "
        "ini distill_concurrency).",
        ini_help="model calls in flight at once",
        default="8",
    ),
    Option(
        "report",
        values.path,
        path=True,
        metavar="PATH",
        flag_help="write the JSON report (schema pytest-distill/report/2) to PATH "
        "(ini distill_report).",
        ini_help="path of the JSON report",
    ),
    Option(
        "html",
        values.path,
        path=True,
        metavar="PATH",
        flag_help="write the HTML report, one self-contained file, to PATH (ini distill_html).",
        ini_help="path of the HTML report",
    ),
    Option(
        "summary_cases",
        values.switch,
        ini_help="the CI job summary ($GITHUB_STEP_SUMMARY) shows the regressed cases' prompts "
        "and replies",
        ini_type="bool",
        default=False,
    ),
    Option(
        "gate",
        values.text_or_none,
        metavar="EXPR",
        flag_help="deploy gate over role scores, e.g. 'finetuned >= 0.95 * teacher'; a failing "
        "gate ends the session with exit code 6 (ini distill_gate).",
        ini_help="deploy gate expression over role scores",
    ),
    Option(
        "holdout",
        values.number(float, 0.0, 0.9),
        metavar="FRACTION",
        flag_help="share of cases held out from training, by a stable hash of the case id "
        "(default 0.2; ini distill_holdout).",
        ini_help="share of cases held out from training",
        default="0.2",
    ),
    Option(
        "repeats",
        values.number(int, 1, 100),
        metavar="N",
        flag_help="run each case N times per role (one item records the N outcomes); the case's "
        "score is their mean, and pass_k / pass_at_k join the gate's attributes "
        "(default 1; ini distill_repeats).",
        ini_help="times each case runs per role",
        default="1",
    ),
    Option(
        "confidence",
        values.number(float, 0.5, 0.999),
        ini_help="confidence of the gate's intervals and non-inferiority bounds",
        default="0.95",
    ),
    Option(
        "patterns",
        values.strings,
        ini_help="glob patterns of eval files",
        ini_type="args",
        default=DEFAULT_PATTERNS,
    ),
    Option(
        "prices",
        values.price_lines,
        ini_help="lines 'MODEL = PROMPT COMPLETION': USD per 1M tokens, for the cost column; "
        "'batch = FACTOR': the share of the price a Batch API call costs (default 0.5)",
        ini_type="linelist",
        default=[],
    ),
    Option(
        "local_models",
        values.local_models,
        ini_help="lines 'ID = PATH': models the embedded server serves (HF directory or .gguf "
        "file)",
        ini_type="linelist",
        default=[],
    ),
    Option(
        "local_device",
        values.local_device,
        choices=("auto", "cpu", "cuda"),
        ini_help="where the embedded server runs and trains models: auto, cpu or cuda",
        default="auto",
    ),
    Option(
        "trainer_extra_body",
        training.extra_body,
        ini_help="JSON object merged into the fine-tuning job create (e.g. Azure's trainingType)",
    ),
    Option(
        "trainer_api_key_env",
        values.text_or_none,
        ini_help="name of the environment variable holding the trainer endpoint's API key",
    ),
    Option(
        "trainer_endpoint",
        training.trainer_endpoint,
        ini_help="endpoint that fine-tunes: openai, local or a base URL (default: the student's)",
    ),
    Option(
        "method",
        training.method,
        choices=training.METHODS,
        metavar="METHOD",
        flag_help="with --distill: how the student is trained: sft (supervised fine-tuning on "
        "the teacher's passing answers, the default), dpo (preference pairs: the teacher's "
        "passing answer over the student's failing one), sft+dpo (SFT, then DPO on the SFT "
        "model's own failing samples) or sft+rl (SFT, then reinforcement fine-tuning with the "
        "suite's graders as the reward) (ini distill_method).",
        ini_help="how --distill trains: sft, dpo, sft+dpo or sft+rl (see --distill-method)",
        default="sft",
    ),
    Option(
        "pair_samples",
        values.number(int, 1, 64),
        ini_help="sft+dpo: answers sampled from the SFT model per train-split case, whose "
        "failing ones become the pairs' rejected side",
        default="4",
    ),
    Option(
        "pair_temperature",
        values.number(float, 0.0, 2.0),
        ini_help="sft+dpo: the sampling temperature of those answers",
        default="1.0",
    ),
    Option(
        "beta",
        training.hyperparameter_or_auto,
        ini_help="dpo and sft+dpo: DPO's beta, above 0 and at most 2 (default: the trainer's "
        "choice)",
    ),
    Option(
        "n_epochs",
        training.hyperparameter_or_auto,
        ini_help="fine-tuning epochs (default: the trainer's choice)",
    ),
    Option(
        "batch_size",
        training.hyperparameter_or_auto,
        ini_help="fine-tuning batch size (default: the trainer's choice)",
    ),
    Option(
        "learning_rate_multiplier",
        training.hyperparameter_or_auto,
        ini_help="fine-tuning learning-rate multiplier",
    ),
    Option(
        "suffix",
        training.suffix_or_default,
        ini_help="suffix of the fine-tuned model's name",
        default="distill",
    ),
    Option("seed", training.seed, ini_help="seed of the fine-tuning job"),
    Option(
        "poll_interval",
        values.number(float, 0.0),
        ini_help="seconds between job polls",
        default="2",
    ),
    Option(
        "job_timeout",
        values.number(float, 1.0),
        ini_help="seconds to follow a job before giving up",
        default="3600",
    ),
    Option(
        "max_example_tokens",
        values.number(int, 16),
        ini_help="training examples over this many (estimated) tokens are dropped",
        default="4096",
    ),
    Option(
        "store",
        values.switch,
        ini_help="send teacher calls with store: true and metadata",
        ini_type="bool",
        default=False,
    ),
    Option(
        "record_mode",
        values.record_mode,
        choices=RECORD_MODES,
        flag_help="replay and record model traffic in cassettes: none (replay only, no network), "
        "once, new_episodes, all (re-record) or off (live, nothing recorded); default none "
        "when the CI environment variable is set, else off (ini distill_record_mode).",
        ini_help="none, once, new_episodes, all or off (see --distill-record-mode)",
    ),
    Option(
        "cassette_dir",
        values.under_rootdir,
        path=True,
        ini_help="directory of the cassettes, from the rootdir",
        default="cassettes",
    ),
    Option(
        "timeout",
        values.number_or_none(float, 0.1),
        ini_help="seconds before a model call times out (default 120; 900 on the embedded server)",
    ),
    Option(
        "max_retries",
        values.number(int, 0),
        ini_help="retries of a failed model call",
        default="2",
    ),
)
