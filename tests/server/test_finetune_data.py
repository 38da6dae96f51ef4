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


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def _call(call_id: str = "c1", name: str = "get_weather", city: str = "Paris") -> dict[str, object]:
    arguments = json.dumps({"city": city})
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _agent_line(*messages: dict[str, object], **extra: object) -> dict[str, object]:
    user = {"role": "user", "content": "Weather in Paris and Oslo?"}
    return {"messages": [user, *messages], "tools": [WEATHER], **extra}


def test_a_conversation_with_tool_calls_and_results_is_read_whole() -> None:
    line = _agent_line(
        {"role": "assistant", "content": None, "tool_calls": [_call("a"), _call("b", city="Oslo")]},
        {"role": "tool", "tool_call_id": "b", "content": "-3C"},
        {"role": "tool", "tool_call_id": "a", "content": "12C"},
        {"role": "assistant", "content": "Paris 12C, Oslo -3C.", "weight": 1},
        parallel_tool_calls=True,
    )
    example = parse_training_file(_file(line, at=1))[0]
    assert [tool.name for tool in example.tools] == ["get_weather"]
    assert example.parallel_tool_calls is True
    caller = example.messages[1]
    assert caller.content == "" and caller.trained
    assert [(c.id, c.parsed_arguments()) for c in caller.tool_calls] == [
        ("a", {"city": "Paris"}),
        ("b", {"city": "Oslo"}),
    ]
    assert [m.tool_call_id for m in example.messages[2:4]] == ["b", "a"]
    assert example.messages[-1].tool_calls == ()


def test_a_line_may_end_with_the_tool_calls_it_teaches() -> None:
    line = _agent_line({"role": "assistant", "tool_calls": [_call()]})
    example = parse_training_file(_file(line, at=1))[0]
    assert example.messages[-1].tool_calls[0].name == "get_weather"
    assert example.parallel_tool_calls is None


@pytest.mark.parametrize(
    ("bad", "rule"),
    [
        (
            _agent_line({"role": "assistant", "tool_calls": [_call(name="get_time")]}),
            "messages[1].tool_calls[0].function.name: 'get_time' is not among the tools",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "tool_calls": [_call()]},
                ]
            },
            "is not among the tools (none)",
        ),
        (
            _agent_line(
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "get_weather"}}
                    ],
                }
            ),
            "messages[1].tool_calls[0].function.arguments: is missing",
        ),
        (
            _agent_line(
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                        }
                    ],
                }
            ),
            "arguments: is an object; write the arguments as a JSON string",
        ),
        (
            _agent_line(
                {"role": "assistant", "tool_calls": [_call("a")]},
                {"role": "tool", "tool_call_id": "zzz", "content": "12C"},
                {"role": "assistant", "content": "12C"},
            ),
            "messages[2] (tool) answers tool_call_id 'zzz', which no assistant message",
        ),
        (
            _agent_line(
                {"role": "assistant", "tool_calls": [_call("a"), _call("b", city="Oslo")]},
                {"role": "tool", "tool_call_id": "a", "content": "12C"},
                {"role": "assistant", "content": "12C"},
            ),
            "messages[1] calls 'b', but no tool message answers it before messages[3]",
        ),
        (
            _agent_line(
                {"role": "tool", "tool_call_id": "a", "content": "12C"},
                {"role": "assistant", "content": "12C"},
            ),
            "messages[1] (tool) answers tool_call_id 'a'",
        ),
        (
            _agent_line(
                {"role": "assistant", "tool_calls": [_call("a")]},
                {"role": "tool", "content": "12C"},
                {"role": "assistant", "content": "12C"},
            ),
            "messages[2] (tool) has `tool_call_id` None",
        ),
        (
            _agent_line(
                {"role": "assistant", "content": "Let me look.", "weight": 0},
                {"role": "user", "content": "well?"},
            ),
            "every assistant message has weight 0",
        ),
        (
            _agent_line({"role": "assistant", "content": "12C", "weight": 0}),
            "every assistant message has weight 0",
        ),
        (
            _agent_line({"role": "assistant", "content": "x"}, parallel_tool_calls="yes"),
            "`parallel_tool_calls` is 'yes'",
        ),
        (
            {**_agent_line({"role": "assistant", "content": "x"}), "tools": [{"name": "f"}]},
            "tools[0].type: is None",
        ),
        (
            _agent_line({"role": "user", "content": "x", "tool_calls": [_call()]}),
            "messages[1] (user) has `tool_calls`",
        ),
    ],
)
def test_each_tool_rule_names_the_line_that_breaks_it(bad: object, rule: str) -> None:
    with pytest.raises(InvalidTrainingFile) as info:
        parse_training_file(_file(bad))
    assert info.value.line == 4
    assert "line 4" in str(info.value) and rule in str(info.value)
