"""Which ``distill_prices`` line prices a model, as the API names it in its answers.

The API answers with dated snapshots (``gpt-4.1-2025-04-14``) where the request named the
alias (``gpt-4.1``), so a price line applies to the model and to its snapshots (a
``-YYYY-MM-DD`` suffix). A fine-tuned model (``ft:BASE:org:suffix:id``) is billed at its own
rates: it is priced by a line for itself or an ``ft:BASE`` line (``BASE`` again with or without
its snapshot date), never silently at the base model's price; without one it is unpriced.
A call answered through a Batch API batch costs ``batch_factor`` of its price.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

from pytest_distill.options.settings import BATCH_PRICE_FACTOR

_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")
P = TypeVar("P")


def price_for(model: str, prices: Mapping[str, P]) -> P | None:
    """The price of ``model``, or None when no line applies."""
    if model in prices:
        return prices[model]
    if model.startswith("ft:"):
        base = model.split(":")[1]
        return _own_or_snapshot_of(f"ft:{base}", prices)
    return _own_or_snapshot_of(model, prices)


def _own_or_snapshot_of(model: str, prices: Mapping[str, P]) -> P | None:
    if model in prices:
        return prices[model]
    alias = _SNAPSHOT.sub("", model)
    return prices.get(alias) if alias != model else None


def batch_factor(prices: Mapping[str, Any]) -> float:
    """The share of the price a call answered through a batch costs: the table's ``batch``
    line, else OpenAI's half."""
    return float(getattr(prices, "batch", BATCH_PRICE_FACTOR))
