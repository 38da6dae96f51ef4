"""Constrained decoding: ``response_format`` JSON and JSON Schemas, and forced tool calls.

The tiny model is untrained: its answers are random text. Every one of them being valid JSON,
valid against its schema, shows that the grammar, not luck, shaped them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import httpx2 as httpx
import pytest
import torch
from pydantic import BaseModel, Field

from distill_server.engine.constrain import Constraint, UnsupportedSchema
from distill_server.engine.decode import Engine, GenRequest, GenResult
from distill_server.models import ModelSource
from distill_shapes.tools import schema_error

QUESTION = [{"role": "user", "content": "Describe the ticket as JSON."}]
SETTINGS = [(0.0, None), (1.0, 1), (1.0, 2), (0.7, 3), (1.5, 4)]
"""(temperature, seed): greedy, and sampled with several seeds."""

SCHEMAS: dict[str, dict[str, Any]] = {
    "nested objects and enums": {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 10},
                    "role": {"enum": ["admin", "user", "guest"]},
                },
                "required": ["name", "role"],
                "additionalProperties": False,
            },
            "active": {"type": "boolean"},
        },
        "required": ["user", "active"],
        "additionalProperties": False,
    },
    "arrays and numbers": {
        "type": "object",
        "properties": {
            "scores": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 100},
                "minItems": 1,
                "maxItems": 4,
            },
            "ratio": {"type": "number", "minimum": 0, "maximum": 1, "multipleOf": 0.25},
        },
        "required": ["scores", "ratio"],
        "additionalProperties": False,
    },
    "required and optional keys": {
        "type": "object",
        "properties": {
            "id": {"type": "integer", "minimum": 1, "maximum": 9999},
            "note": {"type": ["string", "null"], "maxLength": 8},
            "kind": {"const": "ticket"},
        },
        "required": ["id", "kind"],
        "additionalProperties": False,
    },
    "a top-level array of enums": {
        "type": "array",
        "items": {"enum": ["red", "green", "blue"]},
        "minItems": 2,
        "maxItems": 3,
    },
}

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 10},
        "unit": {"enum": ["c", "f"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TICKET = {
    "type": "object",
    "properties": {"priority": {"type": "integer", "minimum": 1, "maximum": 5}},
    "required": ["priority"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "open_ticket", "parameters": TICKET}},
    {"type": "function", "function": {"name": "ping"}},
]
PARAMETERS: dict[str, dict[str, Any]] = {
    "get_weather": WEATHER,
    "open_ticket": TICKET,
    "ping": {"type": "object", "properties": {}, "additionalProperties": False},
}


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Engine:
    return Engine(ModelSource("tiny", tiny_model))


def ask(
    max_tokens: int = 200,
    temperature: float = 0.0,
    seed: int | None = None,
    constraint: Constraint | None = None,
    prompt: str = "Describe the ticket as JSON.",
) -> GenRequest:
    messages = ({"role": "user", "content": prompt},)
    return GenRequest(messages, max_tokens, temperature, 1.0, seed, (), constraint=constraint)


def run(engine: Engine, *requests: GenRequest) -> list[GenResult]:
    results = engine.generate(None, list(requests))
    for result in results:
        assert isinstance(result, GenResult), result
    return results  # type: ignore[return-value]  # checked just above


def chat(server: Any, **body: Any) -> httpx.Response:
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        return client.post("/chat/completions", json={"model": "tiny", **body})


def strict(schema: dict[str, Any], strict: bool | None = True) -> dict[str, Any]:
    inner: dict[str, Any] = {"name": "answer", "schema": schema}
    if strict is not None:
        inner["strict"] = strict
    return {"type": "json_schema", "json_schema": inner}


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_strict_json_schema_replies_are_always_valid(server: Any, name: str) -> None:
    schema = SCHEMAS[name]
    for temperature, seed in SETTINGS:
        response = chat(
            server,
            messages=QUESTION,
            temperature=temperature,
            seed=seed,
            max_tokens=200,
            response_format=strict(schema),
        )
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        assert choice["finish_reason"] == "stop", choice
        value = json.loads(choice["message"]["content"])
        assert schema_error(value, schema) is None, (temperature, seed, value)


def test_a_schema_without_strict_is_enforced_too(server: Any) -> None:
    schema = SCHEMAS["nested objects and enums"]
    for temperature, seed in SETTINGS[:3]:
        body = response_body(server, strict(schema, None), temperature, seed)
        assert schema_error(json.loads(body["choices"][0]["message"]["content"]), schema) is None


def response_body(
    server: Any, response_format: dict[str, Any], temperature: float, seed: int | None
) -> dict[str, Any]:
    response = chat(
        server,
        messages=QUESTION,
        temperature=temperature,
        seed=seed,
        max_tokens=200,
        response_format=response_format,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_without_strict_a_schema_it_cannot_wholly_enforce_is_enforced_in_part(
    server: Any,
) -> None:
    schema = {**SCHEMAS["a top-level array of enums"], "uniqueItems": True}
    for temperature, seed in SETTINGS[:3]:
        body = response_body(server, strict(schema, False), temperature, seed)
        value = json.loads(body["choices"][0]["message"]["content"])
        # Everything but the unique items is enforced.
        assert schema_error(value, SCHEMAS["a top-level array of enums"]) is None


def test_json_object_answers_start_an_object(server: Any) -> None:
    body = response_body(server, {"type": "json_object"}, 0.0, None)
    choice = body["choices"][0]
    assert choice["message"]["content"].startswith("{")
    if choice["finish_reason"] == "stop":
        assert isinstance(json.loads(choice["message"]["content"]), dict)


def test_text_format_is_unconstrained(server: Any) -> None:
    plain = chat(server, messages=QUESTION, temperature=0, max_tokens=12)
    text = chat(
        server, messages=QUESTION, temperature=0, max_tokens=12, response_format={"type": "text"}
    )
    assert plain.status_code == text.status_code == 200
    first, second = (r.json()["choices"][0]["message"]["content"] for r in (plain, text))
    assert first == second


class _Closing(torch.nn.Module):
    """A head that favours the tokens that close strings and objects, so that answers end."""

    def __init__(self, head: torch.nn.Module, favoured: list[int]) -> None:
        super().__init__()
        self.head = head
        self.favoured = favoured

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.head(hidden)
        logits[..., self.favoured] += 50.0
        return logits


def test_json_object_gives_a_json_object(tiny_model: Path) -> None:
    engine = Engine(ModelSource("tiny", tiny_model))
    favoured = [engine.tokenizer.convert_tokens_to_ids(t) for t in ('"', "}", "]")]
    engine.base.lm_head = _Closing(engine.base.lm_head, favoured)
    for temperature, seed in SETTINGS:
        request = ask(300, temperature, seed, Constraint.json_object())
        [result] = run(engine, request)
        assert result.finish_reason == "stop", result
        assert isinstance(json.loads(result.text), dict), result.text


def calls_in(text: str) -> list[dict[str, Any]]:
    """The contract's blocks, joined by newlines, each a JSON object: name, then arguments."""
    blocks = re.findall(r"<tool_call>\n(.*?)\n</tool_call>", text, re.DOTALL)
    assert "\n".join(f"<tool_call>\n{b}\n</tool_call>" for b in blocks) == text, text
    calls = [json.loads(block) for block in blocks]
    for call in calls:
        assert list(call) == ["name", "arguments"], call
        assert call["name"] in PARAMETERS, call
        assert schema_error(call["arguments"], PARAMETERS[call["name"]]) is None, call
    return calls


@pytest.mark.parametrize(
    ("name", "parallel"),
    [(None, True), (None, False), ("open_ticket", True), ("get_weather", False)],
)
def test_tool_call_constraints_give_the_contract_blocks(
    engine: Engine, name: str | None, parallel: bool
) -> None:
    constraint = Constraint.tool_calls(TOOLS, name=name, parallel=parallel)
    for temperature, seed in SETTINGS:
        [result] = run(engine, ask(600, temperature, seed, constraint, "What is the weather?"))
        assert result.finish_reason == "stop", result
        calls = calls_in(result.text)
        assert calls
        if not parallel:
            assert len(calls) == 1
        if name is not None:
            assert {call["name"] for call in calls} == {name}


def test_constrained_and_unconstrained_rows_decode_together_as_alone(engine: Engine) -> None:
    schema = Constraint.json_schema(SCHEMAS["required and optional keys"])
    tools = Constraint.tool_calls(TOOLS, parallel=False)
    requests = [
        ask(24, prompt="Tell me a story."),
        ask(200, constraint=schema),
        ask(24, prompt="Name three colours."),
        ask(200, constraint=tools, prompt="What is the weather?"),
        ask(24, prompt="Why is the sky blue?"),
    ]
    together = run(engine, *requests)
    alone = [run(engine, request)[0] for request in requests]
    assert [r.text for r in together] == [r.text for r in alone]
    assert [r.finish_reason for r in together] == [r.finish_reason for r in alone]
    assert together[0].batch_size == 5


def test_a_streamed_json_schema_answer_is_the_same_text(server: Any) -> None:
    import openai

    schema = SCHEMAS["nested objects and enums"]
    args: dict[str, Any] = {
        "model": "tiny",
        "messages": QUESTION,
        "temperature": 0,
        "max_tokens": 200,
        "response_format": strict(schema),
    }
    with openai.OpenAI(base_url=server.base_url, api_key="local", max_retries=0) as client:
        whole = client.chat.completions.create(**args)
        chunks = list(client.chat.completions.create(**args, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert schema_error(json.loads(streamed), schema) is None


class Priority(BaseModel):
    level: int = Field(ge=1, le=5)
    label: Literal["low", "high"]


class Ticket(BaseModel):
    title: str = Field(max_length=12)
    priority: Priority
    tags: list[Literal["bug", "docs", "ui"]] = Field(max_length=3)


def test_the_sdk_parses_replies_into_a_pydantic_model(server: Any) -> None:
    import openai

    with openai.OpenAI(base_url=server.base_url, api_key="local", max_retries=0) as client:
        for seed in (1, 2):
            completion = client.chat.completions.parse(
                model="tiny",
                messages=QUESTION,  # type: ignore[arg-type]
                response_format=Ticket,
                temperature=1.0,
                seed=seed,
                max_tokens=200,
            )
            parsed = completion.choices[0].message.parsed
            assert isinstance(parsed, Ticket), completion
        beta = client.beta.chat.completions.parse(
            model="tiny",
            messages=QUESTION,  # type: ignore[arg-type]
            response_format=Ticket,
            temperature=0,
            max_tokens=200,
        )
        assert isinstance(beta.choices[0].message.parsed, Ticket)


@pytest.mark.parametrize(
    ("response_format", "param", "words"),
    [
        (
            strict({"type": "object", "properties": {"a": {"type": "nope"}}}),
            "response_format.json_schema.schema.properties.a.type",
            "not valid JSON Schema",
        ),
        (strict({"not": {"type": "string"}}), "response_format.json_schema.schema", '"not"'),
        (
            strict({"type": "string", "format": "postcode"}),
            "response_format.json_schema.schema",
            "postcode",
        ),
        ({"type": "xml"}, "response_format.type", "json_schema"),
        ({"type": "json_schema"}, "response_format.json_schema", "write an object"),
        ("json", "response_format", "write an object"),
    ],
)
def test_a_bad_response_format_is_a_400_naming_it(
    server: Any, response_format: Any, param: str, words: str
) -> None:
    response = chat(server, messages=QUESTION, max_tokens=4, response_format=response_format)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert words in error["message"], error
    assert error["type"] == "invalid_request_error"


def test_constraints_say_what_they_cannot_enforce() -> None:
    with pytest.raises(UnsupportedSchema, match="uniqueItems"):
        Constraint.json_schema({"type": "array", "uniqueItems": True})
    assert Constraint.json_schema({"type": "array", "uniqueItems": True}, lenient=True)
    unique = {"type": "object", "properties": {"xs": {"type": "array", "uniqueItems": True}}}
    loose = {"type": "function", "function": {"name": "f", "parameters": unique}}
    assert Constraint.tool_calls([loose]).kind == "tool_calls"  # the rest is enforced
    strict_tool = {"type": "function", "function": {**loose["function"], "strict": True}}
    with pytest.raises(UnsupportedSchema, match="uniqueItems"):
        Constraint.tool_calls([strict_tool])
    with pytest.raises(ValueError, match="No tool named 'nope'"):
        Constraint.tool_calls(TOOLS, name="nope")
    assert Constraint.json_object() == Constraint.json_object()


def test_grammars_are_compiled_once_per_text(engine: Engine) -> None:
    constraint = Constraint.json_schema(SCHEMAS["nested objects and enums"])
    first, second = engine.grammars.matcher(constraint), engine.grammars.matcher(constraint)
    assert first.inner is not second.inner  # each row has its own place in the grammar
    assert engine.grammars.tokenizer is engine.grammars.tokenizer


@pytest.mark.parametrize(
    ("choice", "parallel"),
    [("required", None), ("required", False), ({"name": "open_ticket"}, None)],
    ids=["required", "required-one-call", "named"],
)
def test_a_forced_tool_choice_gets_valid_calls_from_an_untrained_model(
    server: Any, choice: Any, parallel: bool | None
) -> None:
    # The tiny model was never taught the call format: only the grammar makes these calls.
    tool_choice = choice if isinstance(choice, str) else {"type": "function", "function": choice}
    body: dict[str, Any] = {"tools": TOOLS, "tool_choice": tool_choice, "max_tokens": 300}
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    for temperature, seed in SETTINGS:
        response = chat(server, messages=QUESTION, temperature=temperature, seed=seed, **body)
        assert response.status_code == 200, response.text
        choice_json = response.json()["choices"][0]
        assert choice_json["finish_reason"] == "tool_calls", choice_json
        calls = choice_json["message"]["tool_calls"]
        assert calls and (parallel is not False or len(calls) == 1), calls
        for call in calls:
            name = call["function"]["name"]
            assert isinstance(choice, str) or name == choice["name"]
            arguments = json.loads(call["function"]["arguments"])
            assert schema_error(arguments, PARAMETERS[name]) is None, (name, arguments)


def test_the_sdk_gets_forced_calls_typed_streamed_and_not(server: Any) -> None:
    import openai

    request: dict[str, Any] = {
        "model": "tiny",
        "messages": QUESTION,
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "temperature": 0,
        "max_tokens": 300,
    }
    with openai.OpenAI(base_url=server.base_url, api_key="local", max_retries=0) as client:
        whole = client.chat.completions.create(**request)
        chunks = list(client.chat.completions.create(**request, stream=True))
    [call] = whole.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"
    assert schema_error(json.loads(call.function.arguments), WEATHER) is None
    streamed = [d.tool_calls for c in chunks if c.choices and (d := c.choices[0].delta).tool_calls]
    assert streamed[0][0].function.name == "get_weather"
    arguments = "".join(part[0].function.arguments or "" for part in streamed)
    assert arguments == call.function.arguments
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_a_strict_tool_it_cannot_enforce_is_a_400_naming_tools(server: Any) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "odd",
            "strict": True,
            "parameters": {"type": "object", "properties": {"a": {"not": {"type": "string"}}}},
        },
    }
    response = chat(server, messages=QUESTION, tools=[tool], tool_choice="required")
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "tools"


def accepts(engine: Engine, constraint: Constraint, text: str) -> bool:
    """Whether ``constraint`` lets the model write ``text`` (token by token, as it decodes)."""
    matcher = engine.grammars.matcher(constraint)
    try:
        for token in engine.tokenizer.encode(text, add_special_tokens=False):
            matcher.consume(token)
    except RuntimeError:
        return False
    return True


def test_auto_with_strict_tools_allows_text_or_valid_calls_only(engine: Engine) -> None:
    strict_tools = [{**t, "function": {**t["function"], "strict": True}} for t in TOOLS]
    auto = Constraint.tool_calls(strict_tools, optional=True)
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}'
    assert accepts(engine, auto, "It is sunny in Oslo today.")
    assert accepts(engine, auto, call + "\n</tool_call>")
    assert not accepts(engine, auto, call.replace('"c"', '"kelvin"'))  # not in the enum
    assert not accepts(engine, auto, '<tool_call>\n{"name": "launch", "arguments": {}}')
    assert not accepts(engine, auto, "Let me check. " + call)  # text, or calls: not both


@pytest.mark.parametrize("mode", ["auto", "none"])
def test_auto_with_strict_tools_and_none_over_http(server: Any, mode: str) -> None:
    """An untrained model's answers under ``auto`` with strict tools: text, or calls valid
    against the tools; under ``none``: never a call."""
    strict_tools = [{**t, "function": {**t["function"], "strict": True}} for t in TOOLS]
    for temperature, seed in SETTINGS:
        response = chat(
            server,
            messages=QUESTION,
            tools=strict_tools,
            tool_choice=mode,
            temperature=temperature,
            seed=seed,
            max_tokens=120,
        )
        assert response.status_code == 200, response.text
        message = response.json()["choices"][0]["message"]
        for call in message.get("tool_calls") or []:
            assert mode == "auto"
            arguments = json.loads(call["function"]["arguments"])
            assert schema_error(arguments, PARAMETERS[call["function"]["name"]]) is None
        if mode == "none":
            assert message.get("tool_calls") is None
