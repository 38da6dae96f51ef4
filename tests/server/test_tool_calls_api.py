"""Tools through the OpenAI SDK: requests checked, calls returned typed, streamed and stored.

The tiny model calls no tool by itself, so ``tool_student`` fine-tunes it on this server, in
seconds, on lines that answer by calling ``lookup_code``: its replies are real decodes in
the trained format, which the server reads back into ``tool_calls``.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx2
import openai
import pytest

from .conftest import LOOKUP_TOOL, TOOL_PROMPT, Api


def create(api: Api, **kwargs: Any) -> Any:
    fields = {"messages": TOOL_PROMPT, "temperature": 0, "max_tokens": 40, **kwargs}
    return api.call("createChatCompletion", "chat.completions.create", **fields)


def test_the_sdk_gets_the_students_tool_call_typed(api: Api, tool_student: str) -> None:
    answer = create(api, model=tool_student, tools=[LOOKUP_TOOL])
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and len(call.id) == 29
    assert call.function.name == "lookup_code"
    assert json.loads(call.function.arguments) == {"kind": "item"}


def test_with_tool_choice_none_or_no_tools_the_reply_is_text(api: Api, tool_student: str) -> None:
    block = '<tool_call>\n{"name": "lookup_code", "arguments": {"kind": "item"}}\n</tool_call>'
    kept = create(api, model=tool_student, tools=[LOOKUP_TOOL], tool_choice="none").choices[0]
    assert kept.message.content == block and kept.message.tool_calls is None
    assert kept.finish_reason == "stop"
    # Without tools the prompt has no tools section; whatever the model writes is text.
    plain = create(api, model=tool_student).choices[0]
    assert plain.message.tool_calls is None and plain.finish_reason in ("stop", "length")


def test_streamed_tool_calls_arrive_as_openai_sends_them(server: Any, tool_student: str) -> None:
    request: dict[str, Any] = {
        "model": tool_student,
        "messages": TOOL_PROMPT,
        "tools": [LOOKUP_TOOL],
        "temperature": 0,
        "max_tokens": 40,
    }
    with openai.OpenAI(base_url=server.base_url, api_key="local", max_retries=0) as client:
        whole = client.chat.completions.create(**request)
        chunks = list(client.chat.completions.create(**request, stream=True))
        with client.chat.completions.stream(**request) as helper:
            final = helper.get_final_completion()
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [d.tool_calls for d in deltas if d.tool_calls]
    first = calls[0][0]
    assert (first.index, first.type, first.function.name, first.function.arguments) == (
        0,
        "function",
        "lookup_code",
        "",
    )
    assert first.id and first.id.startswith("call_")
    # accumulated as the SDKs do: the arguments are the fragments joined
    arguments = "".join(c[0].function.arguments or "" for c in calls if c[0].index == 0)
    expected = whole.choices[0].message.tool_calls[0]
    assert arguments == expected.function.arguments
    assert "".join(d.content or "" for d in deltas) == ""
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [f for f in finishes if f] == ["tool_calls"] and finishes[-1] == "tool_calls"
    # the SDK's stream helper builds the same typed call
    [built] = final.choices[0].message.tool_calls
    assert built.function.name == "lookup_code"
    assert built.function.arguments == expected.function.arguments
    assert final.choices[0].finish_reason == "tool_calls"


def test_stored_completions_keep_the_calls_and_the_tools(api: Api, tool_student: str) -> None:
    answer = create(api, model=tool_student, tools=[LOOKUP_TOOL], store=True)
    stored = api.call(
        "getChatCompletion", "chat.completions.retrieve", completion_id=answer.id
    ).choices[0]
    assert stored.finish_reason == "tool_calls"
    assert stored.message.tool_calls[0].function.name == "lookup_code"
    # the dashboard's view of it shows the tools offered and the call made
    root = api.base_url.removesuffix("/v1")
    with httpx2.Client(base_url=root) as browser:
        page = browser.get(f"/completions/{answer.id}").text
    assert "Tools" in page and "Look up the code of a thing" in page
    assert 'lookup_code({"kind": "item"})' in page.replace("&#34;", '"')


def test_distilling_stored_tool_completions_writes_training_lines_with_them(
    tmp_path: Path,
) -> None:
    from distill_server.dashboard.distill import training_lines
    from distill_server.store import Record, Store
    from distill_shapes.training import parse_training_file

    store = Store(tmp_path / "state.sqlite3")
    call = CONVERSATION[2]["tool_calls"][0]
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    body = {"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]}
    for i in range(10):
        prompt = [{"role": "user", "content": f"Which code goes with item {i}?"}]
        extra = {"messages": prompt, "tools": [LOOKUP_TOOL]}
        store.put(Record("completion", f"chatcmpl-{i}", {**body, "id": f"chatcmpl-{i}"}, extra))
    ids = tuple(f"chatcmpl-{i}" for i in [*range(10), 3])
    data = training_lines(SimpleNamespace(store=store), ids)
    store.close()
    examples = parse_training_file(data)
    assert len(examples) == 10  # the same line twice is written once
    assert all([t.name for t in e.tools] == ["lookup_code"] for e in examples)
    assert examples[0].messages[-1].tool_calls[0].arguments == '{"kind": "item"}'


CONVERSATION = [
    {"role": "system", "content": "You look codes up."},
    *TOOL_PROMPT,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "lookup_code", "arguments": '{"kind": "item"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "ZEBRA-7"},
]


def test_a_conversation_with_calls_and_results_is_answered(api: Api) -> None:
    answer = create(
        api,
        model="tiny",
        messages=CONVERSATION,
        tools=[LOOKUP_TOOL],
        tool_choice={"type": "function", "function": {"name": "lookup_code"}},
        parallel_tool_calls=False,
        response_format={"type": "text"},
        max_tokens=4,
    )
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        ({"tools": {"x": 1}}, "tools", "valid array"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type", "'retrieval'"),
        (
            {"tools": [{"type": "function", "function": {"name": "a b"}}]},
            "tools[0].function.name",
            "1-64 of",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]},
            "tools[0].function.parameters.type",
            "",
        ),
        ({"tools": [LOOKUP_TOOL, LOOKUP_TOOL]}, "tools[1].function.name", "defined twice"),
        ({"tools": [LOOKUP_TOOL], "tool_choice": "always"}, "tool_choice", "'always'"),
        ({"tool_choice": "required"}, "tool_choice", "no tools"),
        (
            {
                "tools": [LOOKUP_TOOL],
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            },
            "tool_choice.function.name",
            "not among the tools",
        ),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls", ""),
        ({"response_format": {"type": "xml"}}, "response_format.type", "'xml'"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "r", "schema": {"type": 3}},
                }
            },
            "response_format.json_schema.schema.type",
            "not valid JSON Schema",
        ),
        (
            {"messages": [{"role": "tool", "content": "12C"}]},
            "messages[0].tool_call_id",
            "tool_call_id",
        ),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}]},
            "messages[0].tool_calls[0].function",
            "",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x", "tool_calls": CONVERSATION[2]["tool_calls"]}
                ]
            },
            "messages[0].tool_calls",
            "only assistant messages",
        ),
    ],
)
def test_malformed_tool_fields_are_a_400_naming_the_field(
    api: Api, fields: dict[str, Any], param: str, says: str
) -> None:
    request = {"model": "tiny", "messages": TOOL_PROMPT, "max_tokens": 2, **fields}
    error = api.error(400, "chat.completions.create", **request)
    assert error["param"] == param, error
    assert says in error["message"]
