"""Two tweaks that keep the example's live run within minutes on a CPU.

- Items run role by role (every teacher call, then every student call) rather than case by
  case: the embedded server batches concurrent requests, and a batch is padded to its longest
  prompt, so mixing the teacher's few-shot prompts with the student's short ones would pad
  every student row to the teacher's length.
- At most ``MAX_EXAMPLES_PER_SUITE`` passing teacher outputs per suite go into training, so
  the easy suite (the teacher passes nearly every order) does not dominate the LoRA run's
  time. Examples are kept in case order: the same data gives the same training file, and so
  the same fine-tuning job.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

MAX_EXAMPLES_PER_SUITE = 64
ROLE_ORDER = {"teacher": 0, "student": 1, "finetuned": 2}
_KEPT = pytest.StashKey[Counter[str]]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: ROLE_ORDER.get(getattr(item, "role", ""), len(ROLE_ORDER)))


def pytest_distill_filter_example(
    example: dict[str, Any], case_id: str, config: pytest.Config
) -> bool | None:
    kept = config.stash.setdefault(_KEPT, Counter())
    suite = case_id.partition("::")[0]  # "due_dates::due-017" -> "due_dates"
    if kept[suite] >= MAX_EXAMPLES_PER_SUITE:
        return False
    kept[suite] += 1
    return None
