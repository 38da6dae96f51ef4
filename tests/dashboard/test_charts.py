from __future__ import annotations

from distill_server.dashboard.charts import PAD, WIDTH, loss_chart


def _metrics(step: int, loss: float, total: int = 4) -> dict[str, object]:
    return {"type": "metrics", "data": {"step": step, "total_steps": total, "train_loss": loss}}


def test_no_metrics_event_means_no_chart() -> None:
    assert loss_chart([{"type": "message", "data": {}}]) is None


def test_the_curve_spans_the_whole_job_and_its_loss_range() -> None:
    chart = loss_chart([_metrics(2, 1.0), {"type": "message"}, _metrics(1, 3.0)])
    assert chart is not None
    assert (chart.steps, chart.total_steps, chart.count) == (4, 4, 2)
    assert (chart.low, chart.high, chart.last) == (1.0, 3.0, 1.0)
    first, second = (tuple(map(float, p.split(","))) for p in chart.points.split())
    # step 1 of 4 a quarter of the way along, at the top (the highest loss); step 2 at the bottom
    assert first[0] == PAD + (WIDTH - 2 * PAD) / 4 and first[1] == PAD
    assert second[0] == PAD + (WIDTH - 2 * PAD) / 2 and second[1] > first[1]


def test_a_method_job_gets_its_own_curve_beside_the_loss() -> None:
    from distill_server.dashboard.charts import method_chart

    assert method_chart([_metrics(1, 2.0)]) is None
    dpo = [
        {"type": "metrics", "data": {"step": s, "train_loss": 0.7, "reward_margin": m}}
        for s, m in ((1, 0.1), (2, 0.4))
    ]
    label, chart = method_chart(dpo) or ("", None)
    assert label == "DPO reward margin" and chart is not None and chart.last == 0.4
    rl = [
        {"type": "metrics", "data": {"step": 1, "train_loss": 0.0, "reward": 0.5, "pass_rate": 0.5}}
    ]
    label, chart = method_chart(rl) or ("", None)
    assert label == "Mean reward" and chart is not None and chart.last == 0.5
