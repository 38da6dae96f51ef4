"""What the terminal says while calls and training run: replayed job steps are counted, not
printed again one by one."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from pytest_distill.options import TrainingSettings
from pytest_distill.training import jobs


class _Jobs:
    """A job that runs ``steps`` steps, one per poll, then succeeds."""

    def __init__(self, steps: int) -> None:
        self.steps, self.polls = steps, 0

    def retrieve(self, job_id: str) -> Any:
        self.polls += 1
        status = "succeeded" if self.polls > self.steps else "running"
        return SimpleNamespace(id=job_id, status=status, fine_tuned_model="ft:x", error=None)

    def list_events(self, job_id: str, limit: int) -> Any:
        step = min(self.polls - 1, self.steps)
        data = {"step": step, "total_steps": self.steps, "train_loss": 1.0 / (step + 1)}
        event = SimpleNamespace(message=f"step {step}", data=data if step else None)
        return SimpleNamespace(data=[event])


def _follow(replaying: bool) -> list[str]:
    lines: list[str] = []
    client: Any = SimpleNamespace(fine_tuning=SimpleNamespace(jobs=_Jobs(steps=12)))
    jobs.follow(
        client, "ftjob-1", TrainingSettings(poll_interval=0.0), lines.append, replaying=replaying
    )
    return lines


def test_a_replayed_job_shows_its_first_and_last_lines_and_counts_the_rest() -> None:
    lines = _follow(replaying=True)
    assert lines == [
        "distill: job ftjob-1 running, 0s elapsed",
        "distill: 11 recorded progress lines of job ftjob-1 replayed",
        "distill: job ftjob-1 succeeded, step 12/12, loss 0.0769, 0s elapsed",
    ]


def test_a_followed_job_shows_every_step() -> None:
    lines = _follow(replaying=False)
    assert len(lines) == 13
    assert lines[5] == "distill: job ftjob-1 running, step 5/12, loss 0.1667, 0s elapsed"


@pytest.fixture(autouse=True)
def _no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs.time, "sleep", lambda seconds: None)


def test_the_latency_columns_say_they_are_round_trips_and_the_endpoint_time_is_shown(
    project: pytest.Pytester, server: Any
) -> None:
    from conftest import SUITE

    server.processing_ms = 7
    project.makefile(".eval.yaml", capitals=SUITE)
    result = project.runpytest()
    result.stdout.fnmatch_lines(
        [
            "*cases*rt p50 ms*rt p95 ms*",
            "rt ms: a call's round trip, time waiting in the endpoint's queue included; the "
            "endpoint's processing time (openai-processing-ms), p50: teacher 7 ms, student 7 ms",
        ]
    )
