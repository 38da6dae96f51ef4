"""OpenAI's chat fine-tuning file rules, each reported with its line."""

from __future__ import annotations

import json

import pytest

from distill_shapes.training import InvalidTrainingFile, parse_training_file

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


def _file(bad: object, at: int = 4, n: int = 10) -> bytes:
    lines = [json.dumps(GOOD)] * n
    lines[at - 1] = bad if isinstance(bad, str) else json.dumps(bad)
    return "\n".join(lines).encode()


@pytest.mark.parametrize(
    ("bad", "rule"),
    [
        ("{not json", "not valid JSON"),
        ({"prompt": "old format"}, "`messages` must be a non-empty list"),
        ({"messages": []}, "`messages` must be a non-empty list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "role 'robot'; known roles"),
        ({"messages": [{"role": "user", "content": ""}]}, "empty or missing `content`"),
        ({"messages": [{"role": "user", "content": "only a question"}]}, "assistant message"),
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a", "weight": 2},
                ]
            },
            "weight 2",
        ),
    ],
)
def test_each_rule_names_the_line_that_breaks_it(bad: object, rule: str) -> None:
    with pytest.raises(InvalidTrainingFile) as info:
        parse_training_file(_file(bad))
    assert info.value.line == 4
    assert "line 4" in str(info.value) and rule in str(info.value)


def test_fewer_than_ten_examples_is_rejected_for_the_whole_file() -> None:
    with pytest.raises(InvalidTrainingFile, match="has 9 examples; at least 10"):
        parse_training_file(_file(GOOD, n=9))


def test_valid_file_yields_examples_with_trained_assistant_turns() -> None:
    examples = parse_training_file(_file(GOOD) + b"\n\n")
    assert len(examples) == 10
    assert [m.trained for m in examples[0].messages] == [False, True]


def test_content_parts_and_weight_zero_are_understood() -> None:
    parts = {
        "role": "user",
        "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}],
    }
    untrained = {"role": "assistant", "content": "a", "weight": 0}
    line = {"messages": [parts, untrained, {"role": "assistant", "content": "b"}]}
    example = parse_training_file(_file(line, at=1))[0]
    assert example.messages[0].content == "hi there"
    assert [m.trained for m in example.messages] == [False, False, True]
