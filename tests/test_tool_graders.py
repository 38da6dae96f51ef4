"""The tool_calls and json_schema graders, and {{sample.output_tools}} in templates."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from distill_shapes.tools import ToolCall
from pytest_distill.grading.references import uses_reference
from pytest_distill.grading.registry import Grade, GraderConfigError, Sample, make_grader

TOOL_CALLS = {"type": "tool_calls"}


def call(name: str, call_id: str = "c", **arguments: Any) -> ToolCall:
    return ToolCall(call_id, name, json.dumps(arguments))


def grade(
    reference: Any, *calls: ToolCall, spec: Mapping[str, Any] = TOOL_CALLS, text: str = ""
) -> Grade:
    item = {"id": "case-1", "reference": reference}
    return make_grader(spec).grade(Sample(text, tuple(calls)), item)


PARIS = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}
OSLO = {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}
TICKET = {"name": "open_ticket", "arguments": {"category": "vpn", "priority": 2}}


def test_parallel_calls_match_in_any_order() -> None:
    result = grade(
        [PARIS, OSLO, TICKET],
        call("open_ticket", "1", category="vpn", priority=2),
        call("get_weather", "2", city="Oslo", unit="c"),
        call("get_weather", "3", unit="c", city="Paris"),
    )
    assert (result.score, result.passed) == (1.0, True)


def test_partial_credit_is_the_fraction_of_expected_calls_matched() -> None:
    result = grade(
        [PARIS, OSLO, TICKET],
        call("get_weather", "1", city="Paris", unit="c"),
        call("get_weather", "2", city="oslo", unit="c"),
    )
    assert result.score == pytest.approx(1 / 3) and not result.passed
    assert result.reason == (
        '1 of 3 expected tool calls matched: get_weather: get_weather.city: expected "Oslo", got '
        '"oslo"; missing call open_ticket({"category": "vpn", "priority": 2})'
    )
    assert result.detail == ('get_weather.city: expected "Oslo", got "oslo"',)


def test_an_unexpected_call_costs_as_much_as_a_missing_one() -> None:
    result = grade(
        [PARIS],
        call("get_weather", "1", city="Paris", unit="c"),
        call("reset_password", "2", user="ana"),
    )
    assert result.score == pytest.approx(1 / 2) and not result.passed
    assert 'unexpected call reset_password({"user": "ana"})' in result.reason
    assert "1 of 1 expected tool calls matched, 1 unexpected" in result.reason


def test_the_pairing_prefers_exact_matches_over_a_greedy_first_fit() -> None:
    # Oslo-with-wrong-unit is nearer to PARIS than to OSLO by count of equal leaves (unit), but
    # pairing it with OSLO lets PARIS match exactly.
    result = grade(
        [PARIS, OSLO],
        call("get_weather", "1", city="Oslo", unit="f"),
        call("get_weather", "2", city="Paris", unit="c"),
    )
    assert result.score == pytest.approx(1 / 2)
    assert result.detail == ('get_weather.unit: expected "c", got "f"',)


def test_no_call_expected_and_none_made_passes_and_any_call_fails() -> None:
    assert grade([]).passed
    result = grade([], call("open_ticket", category="vpn"))
    assert (result.score, result.passed) == (0.0, False)
    missed = grade([TICKET], text="I opened a ticket.")
    assert missed.score == 0.0 and "0 of 1 expected tool calls matched" in missed.reason


def test_the_json_options_apply_to_the_arguments() -> None:
    spec = {
        "type": "tool_calls",
        "ignore_order": True,
        "tolerance": 0.01,
        "exclude_paths": ["request_id"],
    }
    expected = [{"name": "order", "arguments": {"skus": ["a", "b"], "total": 9.99}}]
    got = call("order", skus=["b", "a"], total=9.991, request_id="r-17")
    assert grade(expected, got, spec=spec).passed
    assert not grade(expected, got).passed


def test_reference_shapes_a_json_string_and_the_wire_shape_and_a_name_alone() -> None:
    got = call("get_weather", city="Paris", unit="c")
    assert grade(json.dumps([PARIS]), got).passed
    wire = {
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"unit": "c", "city": "Paris"}'},
    }
    assert grade([wire], got).passed
    assert grade(PARIS, got).passed  # one call without the list
    assert grade([{"name": "get_weather"}], call("get_weather", city="Rome")).passed
    assert not grade([{"name": "open_ticket"}], got).passed


def test_arguments_that_are_not_json_fail_with_what_the_model_wrote() -> None:
    result = grade([PARIS], ToolCall("c", "get_weather", "{city: Paris"))
    assert result.score == 0.0
    assert "get_weather: arguments are not JSON" in result.reason
    assert "'{city: Paris'" in result.reason


def test_a_malformed_reference_is_a_config_error_naming_the_case() -> None:
    with pytest.raises(GraderConfigError, match="the reference of case 'case-1' \\[0\\] has no"):
        grade([{"arguments": {}}])
    with pytest.raises(GraderConfigError, match="a tool_calls reference is a list"):
        grade("call the weather tool")


def test_the_tool_calls_grader_uses_the_reference_and_checks_its_spec() -> None:
    assert uses_reference(make_grader(TOOL_CALLS))
    with pytest.raises(GraderConfigError, match="unreadable exclude path"):
        make_grader({"type": "tool_calls", "exclude_paths": ["a..b["]})
    with pytest.raises(GraderConfigError, match="unknown key"):
        make_grader({"type": "tool_calls", "order": "any"})


SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "attendees": {"type": "array", "items": {"type": "string"}},
        "minutes": {"type": "integer", "minimum": 5},
    },
    "required": ["title", "minutes"],
    "additionalProperties": False,
}


def schema_grade(text: str, **spec: Any) -> Grade:
    grader = make_grader({"type": "json_schema", "schema": SCHEMA, **spec})
    return grader.grade(Sample(text), {"id": "m-1"})


def test_json_schema_passes_valid_output_even_in_a_fence() -> None:
    assert schema_grade('{"title": "Sync", "minutes": 30}').passed
    assert schema_grade('```json\n{"title": "Sync", "minutes": 30, "attendees": []}\n```').passed


def test_json_schema_names_the_first_error_path() -> None:
    result = schema_grade('{"title": "Sync", "minutes": 30, "attendees": ["ana", 7]}')
    assert (result.score, result.passed) == (0.0, False)
    assert (
        result.reason == "output does not match the schema: attendees[1]: 7 is not of type 'string'"
    )
    assert "(root): 'minutes' is a required property" in schema_grade('{"title": "x"}').reason
    not_json = schema_grade("Title: Sync")
    assert "output is not valid JSON" in not_json.reason


def test_json_schema_can_check_a_tool_calls_arguments() -> None:
    grader = make_grader(
        {
            "type": "json_schema",
            "schema": SCHEMA,
            "input": "{{sample.output_tools[0].function.arguments}}",
        }
    )
    good = Sample("", (call("book", title="Sync", minutes=15),))
    bad = Sample("", (call("book", title="Sync", minutes=1),))
    assert grader.grade(good, {"id": "m"}).passed
    assert "minutes: 1 is less than the minimum of 5" in grader.grade(bad, {"id": "m"}).reason


def test_json_schema_spec_errors() -> None:
    with pytest.raises(GraderConfigError, match=r"is missing 'schema'.*add schema:"):
        make_grader({"type": "json_schema"})
    with pytest.raises(GraderConfigError, match=r"invalid schema\.type \(is not valid JSON Schema"):
        make_grader({"type": "json_schema", "schema": {"type": "str"}})
    assert not uses_reference(make_grader({"type": "json_schema", "schema": SCHEMA}))


def test_sample_output_tools_in_templates_is_openais_tool_call_shape() -> None:
    sample = Sample("", (call("get_weather", "call_1", city="Paris"),))
    spec = {
        "type": "string_check",
        "input": "{{sample.output_tools[0].function.name}}",
        "reference": "get_weather",
    }
    assert make_grader(spec).grade(sample, {"id": "x"}).passed
    whole = {"type": "json", "input": "{{sample.output_tools}}", "reference": "{{item.calls}}"}
    wire = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    assert make_grader(whole).grade(sample, {"id": "x", "calls": wire}).passed
    assert make_grader(whole).grade(Sample("hi"), {"id": "x", "calls": []}).passed
    with pytest.raises(GraderConfigError, match="unknown placeholder"):
        make_grader({"type": "string_check", "input": "{{sample.output_tool}}"})
