"""The shapes of the DPO and reinforcement methods: their lines, the job's ``method``, and
grader JSON, as the plugin writes them and the server reads them."""

from __future__ import annotations

import json

import pytest

from distill_shapes.methods import method_json, parse_method
from distill_shapes.preference import parse_preference_lines, preference_line
from distill_shapes.reinforcement import (
    combine_scores,
    grader_json,
    parse_grader,
    parse_reinforcement_lines,
    reinforcement_line,
)
from distill_shapes.tools import InvalidShape
from distill_shapes.training import InvalidTrainingFile

TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "lookup", "arguments": json.dumps({"q": "x"})},
}


def _lines(records: list[dict]) -> list[str]:
    return [json.dumps(record) for record in records]


def test_preference_lines_round_trip_in_openais_shape() -> None:
    line = preference_line(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
        {"content": "4"},
        {"content": "5"},
    )
    assert line == {
        "input": {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "2+2?"},
            ]
        },
        "preferred_output": [{"role": "assistant", "content": "4"}],
        "non_preferred_output": [{"role": "assistant", "content": "5"}],
    }
    (pair, *_) = parse_preference_lines(_lines([line] * 10))
    assert (pair.chosen.content, pair.rejected.content, pair.line) == ("4", "5", 1)
    assert [m.role for m in pair.messages] == ["system", "user"]


def test_preference_line_with_tools_reads_its_calls() -> None:
    line = preference_line(
        [{"role": "user", "content": "find x"}],
        {"tool_calls": [CALL]},
        {"content": "I cannot."},
        tools=TOOLS,
        parallel_tool_calls=False,
    )
    assert line["input"]["tools"] == TOOLS and line["input"]["parallel_tool_calls"] is False
    assert line["preferred_output"][0]["content"] is None
    (pair, *_) = parse_preference_lines(_lines([line] * 10))
    assert pair.chosen.tool_calls[0].name == "lookup" and pair.tools[0].name == "lookup"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("preferred_output"), "a preference line has `input`"),
        (lambda r: r.update(non_preferred_output=[]), "`non_preferred_output` must be a list"),
        (
            lambda r: r.update(non_preferred_output=[{"role": "assistant", "content": "4"}]),
            "are the same answer",
        ),
        (
            lambda r: r["input"]["messages"].append({"role": "assistant", "content": "4"}),
            "ends with an assistant message",
        ),
        (
            lambda r: r.update(preferred_output=[{"role": "user", "content": "4"}]),
            "an output is an assistant message",
        ),
        (lambda r: r["input"].update(messages=[{"role": "wizard"}]), "input.messages[0]"),
    ],
)
def test_a_broken_preference_line_names_its_line_and_fault(change, message) -> None:
    good = preference_line(
        [{"role": "user", "content": "2+2?"}], {"content": "4"}, {"content": "5"}
    )
    bad = json.loads(json.dumps(good))
    change(bad)
    with pytest.raises(InvalidTrainingFile, match="line 3: ") as caught:
        parse_preference_lines(_lines([good, good, bad] + [good] * 8))
    assert message in str(caught.value)


def test_a_supervised_line_sent_as_preference_says_so() -> None:
    sft = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    with pytest.raises(InvalidTrainingFile, match=r"line 1: .*looks like a supervised line"):
        parse_preference_lines(_lines([sft] * 10))


def test_reinforcement_lines_carry_the_graders_item() -> None:
    line = reinforcement_line(
        [{"role": "user", "content": "capital of France?"}], {"reference": "Paris", "id": "c1"}
    )
    assert line == {
        "messages": [{"role": "user", "content": "capital of France?"}],
        "reference": "Paris",
        "id": "c1",
    }
    (prompt, *_) = parse_reinforcement_lines(_lines([line] * 10))
    assert prompt.item == {"reference": "Paris", "id": "c1"}
    answered = {**line, "messages": [*line["messages"], {"role": "assistant", "content": "x"}]}
    with pytest.raises(InvalidTrainingFile, match="line 2: messages\\[1\\] is an assistant"):
        parse_reinforcement_lines(_lines([line, answered] + [line] * 9))
    with pytest.raises(ValueError, match="overwrite"):
        reinforcement_line([{"role": "user", "content": "q"}], {"tools": []})


def test_grader_json_is_the_grader_or_a_multi_with_their_mean() -> None:
    check = {"type": "string_check", "operation": "eq", "input": "{{sample.output_text}}"}
    assert grader_json([check]) == {**check, "name": "string_check"}
    sim = {"type": "text_similarity", "name": "close enough", "evaluation_metric": "bleu"}
    multi = grader_json([check, sim, check])
    assert multi["type"] == "multi"
    assert list(multi["graders"]) == ["string_check", "close_enough", "string_check_2"]
    parsed = parse_grader(multi)
    scores = {"string_check": 1.0, "close_enough": 0.5, "string_check_2": 0.0}
    assert combine_scores(parsed.calculate_output or "", scores) == pytest.approx(0.5)
    assert parse_grader(check).calculate_output is None


@pytest.mark.parametrize(
    ("formula", "message"),
    [
        ("a + nope", "'nope' is not a grader"),
        ("__import__('os')", "is not allowed"),
        ("a ** 2", "is not allowed"),
        ("(a +", "is not a formula"),
    ],
)
def test_a_formula_outside_arithmetic_is_refused(formula: str, message: str) -> None:
    grader = {"type": "multi", "name": "m", "graders": {"a": {"type": "string_check"}}}
    with pytest.raises(InvalidShape, match="calculate_output") as caught:
        parse_grader({**grader, "calculate_output": formula})
    assert message in str(caught.value)
    assert combine_scores("0.5 * a + 0.5 * max(a, 0) / 1", {"a": 0.4}) == pytest.approx(0.4)


def test_methods_round_trip_and_ranges_are_the_apis() -> None:
    dpo = method_json("dpo", {"beta": 0.1, "n_epochs": 2})
    assert dpo == {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1, "n_epochs": 2}}}
    assert parse_method(dpo).hyperparameters == {"beta": 0.1, "n_epochs": 2}
    grader = {"type": "string_check", "name": "eq", "operation": "eq"}
    rl = method_json("reinforcement", {"compute_multiplier": "auto"}, grader)
    parsed = parse_method(rl)
    assert parsed.type == "reinforcement" and parsed.grader_json == grader
    for bad, where in [
        ({"type": "dpo", "dpo": {"hyperparameters": {"beta": 3}}}, "beta: is 3"),
        ({"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}, "above 0"),
        ({"type": "supervised", "supervised": {"hyperparameters": {"beta": 1}}}, "beta"),
        ({"type": "reinforcement", "reinforcement": {}}, "grader: is missing"),
        ({"type": "ppo"}, "method.type: is 'ppo'"),
        ({"type": "dpo", "supervised": {}}, "has supervised"),
        ({"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1.5}}}, "an integer"),
    ]:
        with pytest.raises(InvalidShape, match="method") as caught:
            parse_method(bad)
        assert where in str(caught.value), (bad, str(caught.value))
