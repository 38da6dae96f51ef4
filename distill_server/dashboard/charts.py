"""The job page's loss curve, as numbers an inline SVG template draws."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

WIDTH, HEIGHT, PAD = 560, 200, 36


@dataclass(frozen=True, slots=True)
class Chart:
    points: str  # "x,y x,y ..." for <polyline points=...>
    steps: int
    low: float
    high: float
    last: float
    count: int
    total_steps: int  # of the whole job, as the trainer announced it; 0 when unknown


METHOD_METRICS = (("reward_margin", "DPO reward margin"), ("reward", "Mean reward"))
"""A method's own curve beside the loss: DPO's chosen-minus-rejected reward margin, RL's mean
reward (the grader's score) of each step's samples."""


def method_chart(events: Iterable[Mapping[str, Any]]) -> tuple[str, Chart] | None:
    """The job's method curve (``METHOD_METRICS``) and its label; None for supervised jobs."""
    events = list(events)
    for key, label in METHOD_METRICS:
        chart = loss_chart(events, key)
        if chart is not None:
            return label, chart
    return None


def loss_chart(events: Iterable[Mapping[str, Any]], key: str = "train_loss") -> Chart | None:
    """Training loss (or another metric, ``key``) by step from a job's ``metrics`` events
    (oldest first); None before any."""
    metrics = [
        e["data"] for e in events if e.get("type") == "metrics" and key in (e.get("data") or {})
    ]
    found = sorted((int(d["step"]), float(d[key])) for d in metrics)
    if not found:
        return None
    total = max(int(d.get("total_steps") or 0) for d in metrics)
    steps = max(total, *(step for step, _ in found))  # the x axis ends at the job's last step
    low, high = min(loss for _, loss in found), max(loss for _, loss in found)
    span = (high - low) or 1.0
    width, height = WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    points = " ".join(
        f"{PAD + width * (step / max(steps, 1)):.1f},{PAD + height * (1 - (loss - low) / span):.1f}"
        for step, loss in found
    )
    return Chart(points, steps, low, high, found[-1][1], len(found), total)
