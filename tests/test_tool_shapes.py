"""OpenAI's tool and response-format shapes: read, checked, and written back as on the wire."""

from __future__ import annotations

import json
from typing import Any

import pytest

from distill_shapes.tools import (
    FunctionTool,
    InvalidShape,
    ResponseFormat,
    ToolCall,
    ToolChoice,
    check_schema,
    parse_response_format,
    parse_tool,
    parse_tool_call,
    parse_tool_calls,
    parse_tool_choice,
    parse_tools,
    schema_error,
)

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}


def _call(name: str = "get_weather", arguments: Any = '{"city": "Paris"}', id: str = "c1") -> Any:
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_a_tool_round_trips_to_its_wire_shape() -> None:
    tool = parse_tool(WEATHER)
    assert tool == FunctionTool(
        "get_weather",
        "The weather in a city",
        WEATHER["function"]["parameters"],
        True,
    )
    assert tool.to_json() == WEATHER
    bare = {"type": "function", "function": {"name": "now"}}
    assert parse_tool(bare).to_json() == bare


@pytest.mark.parametrize(
    ("tool", "field", "words"),
    [
        ("get_weather", "tools[0]", "is a string"),
        ({"type": "retrieval", "function": {"name": "x"}}, "tools[0].type", "'retrieval'"),
        ({"type": "function"}, "tools[0].function", "missing"),
        ({"type": "function", "function": {"name": "get weather"}}, "function.name", "1-64"),
        ({"type": "function", "function": {"name": "x" * 65}}, "function.name", "1-64"),
        ({"type": "function", "function": {"name": "x", "paramters": {}}}, "function", "paramters"),
        (
            {"type": "function", "function": {"name": "x", "parameters": {"type": "string"}}},
            "function.parameters.type",
            '"type": "object"',
        ),
        (
            {
                "type": "function",
                "function": {
                    "name": "x",
                    "parameters": {"type": "object", "properties": {"a": {"type": "text"}}},
                },
            },
            "tools[0].function.parameters.properties.a.type",
            "not valid JSON Schema",
        ),
        ({"type": "function", "function": {"name": "x", "strict": "yes"}}, "strict", "true or"),
    ],
)
def test_a_malformed_tool_names_the_field_and_the_fix(tool: Any, field: str, words: str) -> None:
    with pytest.raises(InvalidShape) as info:
        parse_tools([tool])
    message = str(info.value)
    assert "\n" not in message
    assert field in info.value.field and words in message
    assert "; " in message  # the fix follows the problem


def test_tool_names_are_distinct() -> None:
    with pytest.raises(InvalidShape, match=r"tools\[1\].function.name: 'get_weather' is defined"):
        parse_tools([WEATHER, WEATHER])
    with pytest.raises(InvalidShape, match="tools: is an object"):
        parse_tools(WEATHER)


def test_tool_choice_modes_and_a_named_function() -> None:
    tools = parse_tools([WEATHER])
    for mode in ("none", "auto", "required"):
        assert parse_tool_choice(mode, tools) == ToolChoice(mode)  # type: ignore[arg-type]
        assert parse_tool_choice(mode).to_json() == mode
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert parse_tool_choice(named, tools) == ToolChoice("function", "get_weather")
    assert parse_tool_choice(named, tools).to_json() == named
    with pytest.raises(InvalidShape, match="'always'; use one of none, auto, required"):
        parse_tool_choice("always")
    with pytest.raises(InvalidShape, match="'get_time' is not among the tools \\(get_weather\\)"):
        parse_tool_choice({"type": "function", "function": {"name": "get_time"}}, tools)
    with pytest.raises(InvalidShape, match="'required' but there are no tools"):
        parse_tool_choice("required", ())


def test_tool_calls_are_read_with_json_string_arguments() -> None:
    tools = parse_tools([WEATHER])
    (call,) = parse_tool_calls([_call()], tools=tools)
    assert call == ToolCall("c1", "get_weather", '{"city": "Paris"}')
    assert call.parsed_arguments() == {"city": "Paris"}
    assert call.to_json() == _call()


@pytest.mark.parametrize(
    ("calls", "message"),
    [
        ([], "tool_calls: is a list"),
        ([_call(arguments={"city": "Paris"})], "arguments: is an object; write the arguments as"),
        ([_call(arguments="{city: Paris}")], "arguments: is not valid JSON"),
        ([_call(name="get_time")], "'get_time' is not among the tools (get_weather)"),
        ([_call(id="")], "tool_calls[0].id: is ''"),
        ([_call(), _call()], "tool_calls[1].id: 'c1' is used twice"),
    ],
)
def test_malformed_tool_calls(calls: Any, message: str) -> None:
    with pytest.raises(InvalidShape) as info:
        parse_tool_calls(calls, tools=parse_tools([WEATHER]))
    assert message in str(info.value)


def test_a_models_invalid_arguments_are_kept_for_grading() -> None:
    call = parse_tool_call(_call(arguments="{city: Paris"), json_arguments=False)
    assert call.arguments == "{city: Paris"
    with pytest.raises(ValueError):
        call.parsed_arguments()


def test_response_formats() -> None:
    assert parse_response_format({"type": "text"}) == ResponseFormat("text")
    assert parse_response_format({"type": "json_object"}).to_json() == {"type": "json_object"}
    wire = {
        "type": "json_schema",
        "json_schema": {
            "name": "meeting",
            "schema": {"type": "object", "properties": {"minutes": {"type": "integer"}}},
            "strict": True,
        },
    }
    parsed = parse_response_format(wire)
    assert (parsed.name, parsed.strict) == ("meeting", True)
    assert parsed.to_json() == wire


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"type": "xml"}, "response_format.type: is 'xml'; use one of text, json_object"),
        ({"type": "json_schema"}, "response_format.json_schema: is missing"),
        ({"type": "json_schema", "json_schema": {"schema": {}}}, "json_schema.name: is missing"),
        (
            {"type": "json_schema", "json_schema": {"name": "m", "schema": {"minimum": "0"}}},
            "json_schema.schema.minimum: is not valid JSON Schema",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "m", "scheme": {}}},
            "unknown key(s) 'scheme'",
        ),
    ],
)
def test_malformed_response_formats(value: Any, message: str) -> None:
    with pytest.raises(InvalidShape) as info:
        parse_response_format(value)
    assert message in str(info.value)


def test_schema_checks_and_the_first_error_path() -> None:
    schema = {
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"type": "integer"}}},
        "required": ["items"],
    }
    check_schema(schema)
    assert schema_error({"items": [1, 2]}, schema) is None
    assert schema_error({"items": [1, "2"]}, schema) == "items[1]: '2' is not of type 'integer'"
    assert schema_error({}, schema) == "(root): 'items' is a required property"
    with pytest.raises(InvalidShape, match=r"schema\.type: is not valid JSON Schema"):
        check_schema({"type": 5})


def test_the_shapes_are_json_serialisable() -> None:
    wire = [parse_tool(WEATHER).to_json(), ToolChoice("function", "x").to_json()]
    assert json.loads(json.dumps(wire)) == wire
