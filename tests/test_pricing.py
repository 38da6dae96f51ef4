"""Prices apply to the names the API answers with: dated snapshots and fine-tuned models."""

from __future__ import annotations

import json

import pytest
from conftest import SUITE
from scripted_server import ScriptedServer

from pytest_distill.options.pricing import price_for

PRICES = {"gpt-4.1": 1, "gpt-4.1-mini": 2, "ft:gpt-4.1-mini": 3, "gpt-4o-2024-08-06": 4}


@pytest.mark.parametrize(
    ("model", "price"),
    [
        ("gpt-4.1", 1),
        ("gpt-4.1-2025-04-14", 1),
        ("gpt-4.1-mini-2025-04-14", 2),
        ("gpt-4o-2024-08-06", 4),
        ("gpt-4o", None),
        ("gpt-4.1-nano-2025-04-14", None),
        ("ft:gpt-4.1-mini:acme:distill:AbC123", 3),
        ("ft:gpt-4.1-mini-2025-04-14:acme:distill:AbC123", 3),
        ("ft:gpt-4.1:acme::AbC123", None),  # never at the base model's price
        ("gpt-4.1-2025-04", None),
    ],
)
def test_price_lines_apply_to_snapshots_and_fine_tuned_models_by_ft_lines(
    model: str, price: int | None
) -> None:
    assert price_for(model, PRICES) == price


def _cost_report(
    project: pytest.Pytester, server: ScriptedServer, prices: str
) -> tuple[pytest.RunResult, dict[str, object]]:
    server.answered_as.update({"big": "big-2025-04-14", "small": "ft:small:acme:distill:x1"})
    project.makeini(project.path.joinpath("tox.ini").read_text() + f"\ndistill_prices =\n{prices}")
    project.makefile(".eval.yaml", capitals=SUITE)
    result = project.runpytest("--distill-report=r.json")
    report = json.loads((project.path / "r.json").read_text())
    return result, report


def test_cost_of_a_dated_snapshot_uses_the_alias_price_and_fine_tuned_stays_unpriced(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    result, report = _cost_report(project, server, "    big = 10 30\n    small = 1 3\n")
    scores: dict[str, dict[str, dict[str, object]]] = report["scores"]  # type: ignore[assignment]
    teacher_cost = scores["teacher"]["all"]["cost_usd"]
    assert isinstance(teacher_cost, float) and teacher_cost > 0
    assert scores["student"]["all"]["cost_usd"] is None
    result.stdout.fnmatch_lines(["*teacher*5*100.0%*$0.000*", "*student*5*20.0%* -"])


def test_cost_of_a_fine_tuned_model_uses_its_ft_price_line(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    _, report = _cost_report(project, server, "    big = 10 30\n    ft:small = 2 6\n")
    scores: dict[str, dict[str, dict[str, object]]] = report["scores"]  # type: ignore[assignment]
    student_cost = scores["student"]["all"]["cost_usd"]
    assert isinstance(student_cost, float) and student_cost > 0
