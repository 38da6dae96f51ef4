"""A tweak that keeps the example's live run within minutes on a CPU.

(The plugin itself collects items role by role, so batches of the embedded server are not
padded to the teacher's few-shot prompts.)

At most ``MAX_EXAMPLES_PER_SUITE`` passing teacher outputs per suite go into training, so
neither suite outweighs the other; with the tools in every line, one epoch over the recorded
run's 116 examples was about 6 minutes of LoRA on 2 busy CPU cores. Examples are kept in case
order: the same data gives the same training file, and so the same fine-tuning job.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

MAX_EXAMPLES_PER_SUITE = 64
_KEPT = pytest.StashKey[Counter[str]]()


def pytest_distill_filter_example(
    example: dict[str, Any], case_id: str, config: pytest.Config
) -> bool | None:
    kept = config.stash.setdefault(_KEPT, Counter())
    suite = case_id.partition("::")[0]  # "follow_ups::conv-017" -> "follow_ups"
    if kept[suite] >= MAX_EXAMPLES_PER_SUITE:
        return False
    kept[suite] += 1
    return None
