"""The prompt format of tools and tool calls, the same in training and serving.

A chat is a list of messages as the API takes them: ``role``, ``content`` (text; may be empty
on an assistant message that calls tools), an assistant's ``tool_calls`` (wire shape:
``{"id", "type": "function", "function": {"name", "arguments"}}``, arguments a JSON string)
and a ``tool`` message's ``tool_call_id``. ``render`` turns it, with the request's tool
definitions, into the prompt text:

- where the model's own chat template renders tools (rendering with ``tools=`` changes its
  text), the template renders them, tool calls and tool messages (arguments as objects, as
  Hugging Face templates expect them);
- otherwise (SmolLM2's template knows no tools) the Hermes-style format that vLLM's and
  SGLang's ``hermes`` tool-call parser reads: the tool definitions at the end of the system
  message (``tools_section``), each call a ``<tool_call>`` block of ``{"name", "arguments"}``
  after the assistant's text (``call_block``), and tool results as a user turn of
  ``<tool_response>`` blocks. The chat so converted (``hermes_messages``) is plain
  role/content messages, which any template renders.

A reply is read back by ``parse_reply`` (the whole text) or ``CallStream`` (piece by piece,
for streaming). Pure Python: no torch, no transformers (the tokenizer is passed in).
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from distill_server.errors import ApiError
from distill_shapes.tools import ToolCall
from distill_shapes.training import message_text

OPEN: Final = "<tool_call>"
CLOSE: Final = "</tool_call>"
TOOLS_INTRO: Final = (
    "# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n"
)
TOOLS_OUTRO: Final = (
    "\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n"
    "<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>"
)
_BLOCK: Final = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_ID_ALPHABET: Final = string.ascii_letters + string.digits
_PROBE_TOOL: Final = {
    "type": "function",
    "function": {"name": "probe", "description": "probe", "parameters": {"type": "object"}},
}
_TEMPLATE_TOOLS: dict[str, bool] = {}
"""Whether a chat template renders tools, by the template's text."""

Chat = Sequence[Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply as the API returns it: ``content`` (None when empty and there are calls) and
    the ``calls``; ``finish_reason`` is ``tool_calls`` when there are any."""

    content: str | None
    calls: tuple[ToolCall, ...] = ()


def render(
    tokenizer: Any,
    messages: Chat,
    generation_prompt: bool,
    tools: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The prompt text of ``messages`` (and ``tools``, wire-shape definitions)."""
    if not tokenizer.chat_template:
        raise ApiError(400, "This model's tokenizer has no chat template.", code="no_template")
    uses_tools = bool(tools) or any(
        m.get("tool_calls") or m.get("role") == "tool" for m in messages
    )
    if not uses_tools:
        chat: list[dict[str, Any]] = [dict(m) for m in messages]
        text = tokenizer.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=generation_prompt
        )
    elif template_renders_tools(tokenizer):
        text = tokenizer.apply_chat_template(
            native_messages(messages),
            tools=[dict(tool) for tool in tools] or None,
            tokenize=False,
            add_generation_prompt=generation_prompt,
        )
    else:
        text = tokenizer.apply_chat_template(
            hermes_messages(messages, tools),
            tokenize=False,
            add_generation_prompt=generation_prompt,
        )
    return str(text)


def template_renders_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders tool definitions (its text changes when
    rendered with ``tools=``)."""
    template = str(tokenizer.chat_template)
    if template not in _TEMPLATE_TOOLS:
        chat = [{"role": "user", "content": "probe"}]
        try:
            plain = tokenizer.apply_chat_template(chat, tokenize=False)
            with_tools = tokenizer.apply_chat_template(chat, tools=[_PROBE_TOOL], tokenize=False)
            _TEMPLATE_TOOLS[template] = plain != with_tools
        except Exception:  # a template that fails on tools does not render them
            _TEMPLATE_TOOLS[template] = False
    return _TEMPLATE_TOOLS[template]


def hermes_messages(
    messages: Chat, tools: Sequence[Mapping[str, Any]] = ()
) -> list[dict[str, str]]:
    """``messages`` as plain role/content messages in the Hermes-style format: the tools at
    the end of the system message (one added first if there is none), calls as blocks after
    the assistant's text, consecutive tool results as one user turn."""
    out: list[dict[str, str]] = []
    for message in messages:
        role = str(message.get("role"))
        content = message_text(message.get("content"))
        if role == "tool":
            block = f"<tool_response>\n{content}\n</tool_response>"
            if out and out[-1].get("_tool"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool": "1"})
            continue
        calls = message.get("tool_calls") or ()
        if role == "assistant" and calls:
            blocks = [call_block(*_name_arguments(call)) for call in calls]
            content = "\n".join([content, *blocks] if content else blocks)
        out.append({"role": role, "content": content})
    for message in out:
        message.pop("_tool", None)
    if tools:
        section = tools_section(tools)
        if out and out[0]["role"] == "system":
            system = out[0]["content"]
            out[0] = {"role": "system", "content": f"{system}\n\n{section}" if system else section}
        else:
            out.insert(0, {"role": "system", "content": section})
    return out


def native_messages(messages: Chat) -> list[dict[str, Any]]:
    """``messages`` as Hugging Face chat templates take them: tool-call arguments as objects."""
    out: list[dict[str, Any]] = []
    for message in messages:
        item: dict[str, Any] = {"role": message.get("role"), "content": message.get("content")}
        if message.get("tool_calls"):
            item["tool_calls"] = [
                {
                    "id": call.get("id"),
                    "type": "function",
                    "function": {"name": name, "arguments": _object_or_text(arguments)},
                }
                for call in message["tool_calls"]
                for name, arguments in [_name_arguments(call)]
            ]
        if message.get("tool_call_id") is not None:
            item["tool_call_id"] = message["tool_call_id"]
        out.append(item)
    return out


def tools_section(tools: Sequence[Mapping[str, Any]]) -> str:
    """The text that tells the model its tools: one JSON definition a line."""
    lines = [json.dumps(_definition(tool), ensure_ascii=False) for tool in tools]
    return TOOLS_INTRO + "\n".join(lines) + TOOLS_OUTRO


def call_block(name: str, arguments: str) -> str:
    """One call as the model writes it; ``arguments`` (a JSON string) written as an object."""
    body = {"name": name, "arguments": _object_or_text(arguments)}
    return f"{OPEN}\n{json.dumps(body, ensure_ascii=False)}\n{CLOSE}"


def parse_reply(text: str, tools: Collection[str], *, parallel: bool = True) -> Reply:
    """The reply's calls: every ``<tool_call>`` block holding ``{"name": <one of tools>,
    "arguments": {...}}``. Text outside the blocks, stripped, is the content. A block that is
    not such a call leaves the whole reply as plain text; without ``parallel`` only the first
    call is kept."""
    calls: list[ToolCall] = []
    for match in _BLOCK.finditer(text):
        call = read_call(match.group(1), tools)
        if call is None:
            return Reply(text)
        calls.append(call)
    if not calls:
        return Reply(text)
    content = _BLOCK.sub("", text).strip()
    return Reply(content or None, tuple(calls[:1] if not parallel else calls))


def read_call(inside: str, tools: Collection[str]) -> ToolCall | None:
    """The call a block's inside holds, or None when it is not one of ``tools``' calls."""
    try:
        value = json.loads(inside)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    name, arguments = value.get("name"), value.get("arguments")
    if not isinstance(name, str) or name not in tools or not isinstance(arguments, dict):
        return None
    return ToolCall(new_call_id(), name, json.dumps(arguments, ensure_ascii=False))


def new_call_id() -> str:
    """``call_`` and 24 random letters and digits, as OpenAI's ids look."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


class CallStream:
    """A reply read piece by piece as it decodes: ``feed`` and ``close`` return what is ready
    to send, in order, each a ``str`` (content) or a ``ToolCall``.

    Text streams as it comes, except what may still become a ``<tool_call>`` block (a partial
    ``<tool_call>`` at the end, a block not closed yet) and whitespace before a block, which
    wait; each call goes out when its block closes. Joined, the content equals
    ``parse_reply``'s (up to leading whitespace) as long as every block is a call; a block
    that is not one (bad JSON, an unknown name) goes out as text, since the calls before it
    are already sent (``parse_reply`` would leave the whole reply as text).
    """

    def __init__(self, tools: Collection[str], *, parallel: bool = True) -> None:
        self._tools = tools
        self._parallel = parallel
        self._pending = ""
        self._space = ""
        """Whitespace held back: it goes out before the next text, or not at all if the reply
        ends with calls."""
        self.calls: list[ToolCall] = []

    def feed(self, piece: str) -> list[str | ToolCall]:
        self._pending += piece
        out: list[str | ToolCall] = []
        while self._pending:
            if self._pending.startswith(OPEN):
                end = self._pending.find(CLOSE)
                if end < 0:
                    break
                block = self._pending[: end + len(CLOSE)]
                self._pending = self._pending[end + len(CLOSE) :]
                call = read_call(block[len(OPEN) : -len(CLOSE)].strip(), self._tools)
                if call is None:
                    self._text(block, out)
                elif self._parallel or not self.calls:
                    self.calls.append(call)
                    out.append(call)
                continue
            start = self._pending.find(OPEN)
            if start < 0:
                keep = _open_overlap(self._pending)
                ready, self._pending = (
                    self._pending[: len(self._pending) - keep],
                    (self._pending[len(self._pending) - keep :]),
                )
                self._text(ready, out)
                break
            self._text(self._pending[:start], out)
            self._pending = self._pending[start:]
        return out

    def close(self) -> list[str | ToolCall]:
        """What is left once decoding ended: an unfinished block is text."""
        out: list[str | ToolCall] = []
        rest, self._pending = self._pending, ""
        self._text(rest, out)
        if not self.calls and self._space:
            out.append(self._space)
        self._space = ""
        return out

    def _text(self, text: str, out: list[str | ToolCall]) -> None:
        body = text.rstrip()
        if not body:
            self._space += text
            return
        out.append(self._space + body)
        self._space = text[len(body) :]


def _open_overlap(text: str) -> int:
    """The length of the longest end of ``text`` that begins ``<tool_call>``."""
    for size in range(min(len(text), len(OPEN) - 1), 0, -1):
        if text.endswith(OPEN[:size]):
            return size
    return 0


def _definition(tool: Mapping[str, Any]) -> dict[str, Any]:
    function = tool.get("function") or {}
    shown = {k: function[k] for k in ("name", "description", "parameters") if k in function}
    return {"type": "function", "function": shown}


def _name_arguments(call: Mapping[str, Any]) -> tuple[str, str]:
    function = call.get("function") or {}
    arguments = function.get("arguments", "{}")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return str(function.get("name")), arguments


def _object_or_text(arguments: str) -> Any:
    """The arguments decoded, or the text itself when it is not JSON."""
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


_TEMPLATE_PRELUDE: Final = r"""{#- The tools format of pytest-distill's embedded server
    (Hermes-style, as vLLM's and SGLang's tool-call parsers read it): tools and tool calls are
    turned into plain messages, then the model's own template below renders them. -#}
{%- set ns = namespace(out=[], tool=false) -%}
{%- for m in messages -%}
{%- set content = m.content if m.content is string else '' -%}
{%- if m.role == 'tool' -%}
{%- set block = '<tool_response>\n' ~ content ~ '\n</tool_response>' -%}
{%- if ns.tool -%}
{%- set ns.out = ns.out[:-1] + [{'role': 'user', 'content': ns.out[-1].content ~ '\n' ~ block}] -%}
{%- else -%}
{%- set ns.out = ns.out + [{'role': 'user', 'content': block}] -%}
{%- endif -%}
{%- set ns.tool = true -%}
{%- else -%}
{%- if m.role == 'assistant' and m.tool_calls -%}
{%- set calls = namespace(text=content) -%}
{%- for call in m.tool_calls -%}
{%- set f = call.function if call.function is defined else call -%}
{%- set arguments = f.arguments if f.arguments is string else f.arguments | tojson -%}
{%- set block = '{"name": ' ~ f.name | tojson ~ ', "arguments": ' ~ arguments ~ '}' -%}
{%- set block = '<tool_call>\n' ~ block ~ '\n</tool_call>' -%}
{%- set calls.text = calls.text ~ '\n' ~ block if calls.text else block -%}
{%- endfor -%}
{%- set content = calls.text -%}
{%- endif -%}
{%- set role = 'system' if m.role == 'developer' else m.role -%}
{%- set ns.out = ns.out + [{'role': role, 'content': content}] -%}
{%- set ns.tool = false -%}
{%- endif -%}
{%- endfor -%}
{%- if tools -%}
{%- set lines = namespace(text='') -%}
{%- for tool in tools -%}
{%- set f = tool.function if tool.function is defined else tool -%}
{%- set line = '{"type": "function", "function": {"name": ' ~ f.name | tojson -%}
{%- if f.description is defined and f.description is not none -%}
{%- set line = line ~ ', "description": ' ~ f.description | tojson -%}
{%- endif -%}
{%- if f.parameters is defined and f.parameters is not none -%}
{%- set line = line ~ ', "parameters": ' ~ f.parameters | tojson -%}
{%- endif -%}
{%- set lines.text = lines.text ~ '\n' ~ line ~ '}}' if lines.text else line ~ '}}' -%}
{%- endfor -%}
{%- set section = INTRO ~ lines.text ~ OUTRO -%}
{%- if ns.out and ns.out[0].role == 'system' -%}
{%- set system = ns.out[0].content -%}
{%- set system = system ~ '\n\n' ~ section if system else section -%}
{%- set ns.out = [{'role': 'system', 'content': system}] + ns.out[1:] -%}
{%- else -%}
{%- set ns.out = [{'role': 'system', 'content': section}] + ns.out -%}
{%- endif -%}
{%- endif -%}
{%- set messages = ns.out -%}
"""


def tool_template(template: str) -> str:
    """A chat template for other engines (vLLM's, SGLang's ``--chat-template``) that renders
    tools and tool calls as ``render`` does, around the model's own ``template``."""
    prelude = _TEMPLATE_PRELUDE.replace("INTRO", json.dumps(TOOLS_INTRO)).replace(
        "OUTRO", json.dumps(TOOLS_OUTRO)
    )
    return prelude + template
