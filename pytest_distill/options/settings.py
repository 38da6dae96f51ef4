"""The resolved settings of a session: plain frozen values, safe to pass to xdist workers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_distill.roles import Endpoint, RoleConfig

RECORD_MODES = ("none", "once", "new_episodes", "all", "off")
DEFAULT_PATTERNS = ("*.eval.yaml", "*.eval.yml", "*.eval.jsonl")
RUN_ROLES = ("teacher", "student", "finetuned")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per one million tokens."""

    prompt: float
    completion: float


BATCH_PRICE_FACTOR = 0.5
"""What a call answered through a Batch API batch costs, as a share of its model's price."""


class Prices(dict[str, Price]):
    """The ``distill_prices`` lines by model, and ``batch``: the share of the price a call
    answered through a batch costs (a ``batch = FACTOR`` line; default 0.5, OpenAI's)."""

    def __init__(self, lines: Mapping[str, Price] | None = None, batch: float = BATCH_PRICE_FACTOR):
        super().__init__(lines or {})
        self.batch = batch


@dataclass(frozen=True, slots=True)
class TrainingSettings:
    """How ``--distill`` fine-tunes. The options set all but ``base_model``; for a job, the
    ``--distill`` step sets the base model and the trainer endpoint it resolved."""

    trainer_endpoint: Endpoint | None = None  # None: the student's endpoint
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    suffix: str = "distill"
    seed: int | None = None
    poll_interval: float = 2.0
    job_timeout: float = 3600.0
    max_example_tokens: int = 4096
    store: bool = False
    # Merged into the job create's body, nested objects key by key (Azure's ``trainingType``,
    # the embedded server's ``lora_rank``).
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    api_key_env: str | None = None  # the trainer's key variable; None: the student's rules
    allow_subset: bool = False  # train when a selection left train-split teacher cases out
    no_wait: bool = False  # start the job and return; the next run follows it
    base_model: str = ""  # the student's model, which the job fine-tunes
    # How the student is trained: sft, dpo, sft+dpo or sft+rl (the stages run in that order).
    method: str = "sft"
    pair_samples: int = 4  # sft+dpo: the SFT model's samples per train-split case
    pair_temperature: float = 1.0  # and their temperature
    beta: float | None = None  # DPO's beta; None: the trainer's choice

    @property
    def trainer(self) -> str:
        """The trainer endpoint, as text: part of a job's idempotency key."""
        return str(self.trainer_endpoint)


@dataclass(frozen=True, slots=True)
class Settings:
    distill: bool
    roles: tuple[str, ...]
    role_configs: Mapping[str, RoleConfig]
    concurrency: int
    report_path: Path | None
    gate: str | None
    holdout: float
    patterns: tuple[str, ...]
    prices: Mapping[str, Price] = field(default_factory=Prices)
    local_models: Mapping[str, str] = field(default_factory=dict)
    local_device: str = "auto"  # auto, cpu or cuda: where the embedded server runs models
    training: TrainingSettings = field(default_factory=lambda: TrainingSettings())
    timeout: float | None = None  # None: 120 s, or 900 s on the embedded server
    max_retries: int = 2
    rootpath: Path = Path()
    record_mode: str | None = None  # None: live traffic, nothing recorded
    cassette_dir: Path = Path("cassettes")
    html_path: Path | None = None
    summary_cases: bool = False  # the CI job summary lists prompts and replies
    repeats: int = 1  # times each case runs per role
    confidence: float = 0.95  # of the gate's intervals and one-sided bounds
    batch_roles: tuple[str, ...] = ()  # roles whose data-file cases go through the Batch API
