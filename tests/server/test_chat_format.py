"""The tool prompt format (Hermes-style, or the model's own template) and reading replies."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from distill_server.weights.chat_format import (
    CallStream,
    call_block,
    parse_reply,
    render,
    template_renders_tools,
    tool_template,
    tools_section,
)
from distill_shapes.tools import ToolCall

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": True,
    },
}
TICKET = {"type": "function", "function": {"name": "open_ticket"}}
NAMES = {"get_weather", "open_ticket"}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
}


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_smollm2s_template_has_no_tools_so_the_hermes_format_renders_them(tokenizer: Any) -> None:
    assert not template_renders_tools(tokenizer)
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [CALL, {**CALL, "id": "call_2"}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "-3C"},
    ]
    text = render(tokenizer, chat, True, [WEATHER, TICKET])
    definition = (
        '{"type": "function", "function": {"name": "get_weather", "description": "Weather in a '
        'city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}'
    )
    block = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert text == (
        "<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions to "
        "assist with the user query.\n\nYou are provided with function signatures within "
        "<tools></tools> XML tags:\n<tools>\n"
        f'{definition}\n{{"type": "function", "function": {{"name": "open_ticket"}}}}\n'
        "</tools>\n\nFor each function call, return a json object with function name and "
        "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nWeather in Paris and Oslo?<|im_end|>\n"
        f"<|im_start|>assistant\n{block}\n{block}<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n12C\n</tool_response>\n"
        "<tool_response>\n-3C\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )


def test_without_a_system_message_one_holding_the_tools_comes_first(tokenizer: Any) -> None:
    chat = [{"role": "user", "content": "Hi"}]
    text = render(tokenizer, chat, False, [TICKET])
    assert text.startswith(f"<|im_start|>system\n{tools_section([TICKET])}<|im_end|>\n")
    assert "SmolLM" not in text  # the template's default system message gave way


def test_a_chat_without_tools_renders_exactly_as_the_template_does(tokenizer: Any) -> None:
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert render(tokenizer, chat, False) == tokenizer.apply_chat_template(chat, tokenize=False)


def test_text_before_calls_comes_first_and_arguments_are_written_as_objects() -> None:
    assert call_block("f", '{"a": [1, 2], "é": "ü"}') == (
        '<tool_call>\n{"name": "f", "arguments": {"a": [1, 2], "é": "ü"}}\n</tool_call>'
    )


TOOLS_TEMPLATE = (
    "{% set nl = '\\n' %}"
    "{% if tools %}TOOLS:{{ tools | map(attribute='function.name') | join(',') }}{{ nl }}"
    "{% endif %}"
    "{% for m in messages %}{{ m.role }}:{{ m.content or '' }}"
    "{% for c in m.tool_calls or [] %}[{{ c.function.name }} {{ c.function.arguments.city }}]"
    "{% endfor %}{% if m.tool_call_id %}({{ m.tool_call_id }}){% endif %}{{ nl }}{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def test_a_template_that_renders_tools_renders_them_itself(tokenizer: Any) -> None:
    import copy

    own = copy.copy(tokenizer)
    own.chat_template = TOOLS_TEMPLATE
    assert template_renders_tools(own)
    chat = [
        {"role": "user", "content": "Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12C"},
    ]
    assert render(own, chat, True, [WEATHER]) == (
        "TOOLS:get_weather\nuser:Paris?\nassistant:[get_weather Paris]\ntool:12C(call_1)\n"
        "assistant:"
    )


def _block(name: str, arguments: Any) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def test_each_block_naming_a_tool_is_a_call_and_the_text_outside_is_the_content() -> None:
    text = "Let me check.\n" + _block("get_weather", {"city": "Paris"}) + "\n"
    text += _block("open_ticket", {})
    reply = parse_reply(text, NAMES)
    assert reply.content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in reply.calls] == [
        ("get_weather", {"city": "Paris"}),
        ("open_ticket", {}),
    ]
    assert all(re.fullmatch(r"call_[A-Za-z0-9]{24}", c.id) for c in reply.calls)
    assert len({c.id for c in reply.calls}) == 2
    assert reply.calls[0].to_json()["type"] == "function"
    only = parse_reply(_block("open_ticket", {"p": 1}), NAMES)
    assert only.content is None and only.calls[0].arguments == '{"p": 1}'


@pytest.mark.parametrize(
    "text",
    [
        "Just text.",
        _block("get_weather", {}) + "\n" + _block("delete_everything", {}),  # unknown name
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>',  # bad JSON
        '<tool_call>\n{"name": "get_weather", "arguments": "{}"}\n</tool_call>',  # a string
        '<tool_call>\n{"name": "get_weather"}\n</tool_call>',  # no arguments
        '<tool_call>\n["get_weather"]\n</tool_call>',
        '<tool_call>\n{"name": "get_weather", "arguments": {}}',  # never closed
    ],
)
def test_a_reply_with_a_block_that_is_not_a_call_stays_plain_text(text: str) -> None:
    reply = parse_reply(text, NAMES)
    assert reply.content == text and reply.calls == ()


def test_without_parallel_calls_only_the_first_is_kept() -> None:
    text = _block("get_weather", {"city": "A"}) + "\n" + _block("get_weather", {"city": "B"})
    reply = parse_reply(text, NAMES, parallel=False)
    assert [c.arguments for c in reply.calls] == ['{"city": "A"}']


def _streamed(text: str, size: int, parallel: bool = True) -> tuple[str, list[ToolCall], list[Any]]:
    stream = CallStream(NAMES, parallel=parallel)
    events: list[Any] = []
    for start in range(0, len(text), size):
        events += stream.feed(text[start : start + size])
    events += stream.close()
    content = "".join(e for e in events if isinstance(e, str))
    return content, [e for e in events if isinstance(e, ToolCall)], events


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize(
    "text",
    [
        "Plain text, no calls.\n",
        "Text <tool_ then more",
        "Checking.\n" + _block("get_weather", {"city": "Paris"}),
        _block("get_weather", {"city": "Paris"}) + "\n" + _block("open_ticket", {"a": "b"}),
        "A\n" + _block("open_ticket", {}) + "\nB and C.\n",
        '<tool_call>\n{"name": "get_weather", "arguments": {}}',
    ],
)
def test_streamed_pieces_give_what_the_whole_reply_gives(text: str, size: int) -> None:
    content, calls, events = _streamed(text, size)
    whole = parse_reply(text, NAMES)
    assert content == (whole.content or "")
    assert [(c.name, c.arguments) for c in calls] == [(c.name, c.arguments) for c in whole.calls]
    if calls:  # a call goes out when its block closes, after the text before it
        assert events.index(calls[0]) >= (1 if text.startswith("A") else 0)


def test_streamed_text_goes_out_as_it_comes_except_what_may_start_a_block() -> None:
    stream = CallStream(NAMES)
    assert stream.feed("Hello wor") == ["Hello wor"]
    assert stream.feed("ld <tool") == ["ld"]
    assert stream.feed("_call>\n{") == []
    assert stream.feed('"name": "open_ticket", "arguments": {}}\n</tool_call>') == [stream.calls[0]]
    assert stream.close() == []


def test_a_streamed_block_that_is_not_a_call_goes_out_as_text() -> None:
    bad = '<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call>'
    content, calls, _ = _streamed(_block("open_ticket", {}) + "\n" + bad, 5)
    assert [c.name for c in calls] == ["open_ticket"] and content == "\n" + bad


def test_a_stream_without_parallel_calls_sends_the_first_call_only() -> None:
    text = _block("get_weather", {"city": "A"}) + "\n" + _block("get_weather", {"city": "B"})
    content, calls, _ = _streamed(text, 4, parallel=False)
    assert content == "" and [c.arguments for c in calls] == ['{"city": "A"}']


def test_the_exported_chat_template_renders_what_the_server_renders(tokenizer: Any) -> None:
    """vLLM and SGLang render the student's prompts with ``tool_template`` (arguments as
    objects, as vLLM hands them to templates): the text must be the server's, byte for byte."""
    import copy

    exported = copy.copy(tokenizer)
    exported.chat_template = tool_template(tokenizer.chat_template)
    chats = [
        [{"role": "user", "content": "hi"}],
        [
            {"role": "developer", "content": "S"},
            {"role": "user", "content": "Paris twice?"},
            {"role": "assistant", "content": "ok", "tool_calls": [CALL, {**CALL, "id": "c2"}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "1"},
            {"role": "tool", "tool_call_id": "c2", "content": "2"},
        ],
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "1"},
            {"role": "assistant", "content": "done"},
        ],
    ]
    for chat in chats:
        as_vllm = json.loads(json.dumps(chat))
        for message in as_vllm:
            for call in message.get("tool_calls") or []:
                call["function"]["arguments"] = json.loads(call["function"]["arguments"])
        for tools in ([], [WEATHER, TICKET]):
            for prompt in (True, False):
                served = [
                    {**m, "role": "system" if m["role"] == "developer" else m["role"]} for m in chat
                ]
                theirs = exported.apply_chat_template(
                    as_vllm, tools=tools or None, tokenize=False, add_generation_prompt=prompt
                )
                assert theirs == render(tokenizer, served, prompt, tools)
