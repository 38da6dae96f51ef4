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


def test_calls_answered_through_a_batch_cost_the_batch_factor_of_the_price(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    ini = project.path.joinpath("tox.ini").read_text() + "\ndistill_poll_interval = 0\n"
    project.makefile(".eval.yaml", capitals=SUITE)

    def costs(*args: str, factor: str = "") -> dict[str, float]:
        prices = "\ndistill_prices =\n    big = 10 30\n    small = 1 3\n" + factor
        project.makeini(ini + prices)
        project.runpytest("--distill-report=r.json", *args)
        report = json.loads((project.path / "r.json").read_text())
        return {role: s["all"]["cost_usd"] for role, s in report["scores"].items()}

    live = costs()
    batched = costs("--distill-batch=teacher")
    assert batched["teacher"] == pytest.approx(live["teacher"] * 0.5)
    assert batched["student"] == pytest.approx(live["student"])  # its calls were live
    quarter = costs("--distill-batch=teacher", factor="    batch = 0.25\n")
    assert quarter["teacher"] == pytest.approx(live["teacher"] * 0.25)


@pytest.mark.parametrize("line", ["batch = half", "batch = -1"])
def test_a_bad_batch_factor_is_a_usage_error(project: pytest.Pytester, line: str) -> None:
    project.makeini(project.path.joinpath("tox.ini").read_text() + f"\ndistill_prices = {line}\n")
    result = project.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "the batch factor is a number from 0" in result.stderr.str()


def test_the_price_table_reads_the_batch_factor() -> None:
    from pytest_distill.options.pricing import batch_factor
    from pytest_distill.options.values import prices

    assert batch_factor(prices(["gpt-4.1 = 2 8"])) == 0.5
    assert batch_factor(prices(["gpt-4.1 = 2 8", "batch = 0.4"])) == 0.4
    assert "batch" not in prices(["batch = 0.4"])
    assert batch_factor({}) == 0.5
