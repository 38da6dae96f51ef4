"""OpenAI's tool-calling and structured-output shapes, read and checked in one place.

The shapes of the chat completions API (``openapi.yaml``): a function tool definition
(``ChatCompletionTool``), ``tool_choice`` (``ChatCompletionToolChoiceOption``: ``none``,
``auto``, ``required`` or a ``ChatCompletionNamedToolChoice``), an assistant's tool call
(``ChatCompletionMessageToolCall``), a ``tool`` message's reference to it, and
``response_format`` (``text``, ``json_object``, ``ResponseFormatJsonSchema``). Each ``parse_*``
takes the decoded JSON and either returns a frozen value or raises ``InvalidShape``: one line
that names the field, what is wrong and the fix. ``to_json()`` gives the wire shape back.

JSON Schema itself is checked with ``jsonschema`` (imported only when a schema is checked, so
reading a file without schemas stays cheap): ``check_schema`` for a schema, ``schema_error``
for a value against one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""A function's (or a response format's) name: a-z, A-Z, 0-9, underscores and dashes, <= 64."""
TOOL_CHOICE_MODES: Final = ("none", "auto", "required")
RESPONSE_FORMATS: Final = ("text", "json_object", "json_schema")

Json = dict[str, Any]


class InvalidShape(ValueError):
    """A malformed shape: ``<field>: <what is wrong>; <the fix>``, on one line."""

    def __init__(self, field: str, problem: str, fix: str) -> None:
        super().__init__(f"{field}: {problem}; {fix}")
        self.field = field
        self.problem = problem
        self.fix = fix


@dataclass(frozen=True, slots=True)
class FunctionTool:
    """``{"type": "function", "function": {name, description?, parameters?, strict?}}``."""

    name: str
    description: str | None = None
    parameters: Mapping[str, Any] | None = None
    """A JSON Schema of type object; None: the function takes no parameters."""
    strict: bool | None = None

    def to_json(self) -> Json:
        function: Json = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        if self.parameters is not None:
            function["parameters"] = self.parameters
        if self.strict is not None:
            function["strict"] = self.strict
        return {"type": "function", "function": function}


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """``none``, ``auto``, ``required``, or ``function`` with the ``name`` it forces."""

    mode: Literal["none", "auto", "required", "function"]
    name: str | None = None

    def to_json(self) -> str | Json:
        if self.mode == "function":
            return {"type": "function", "function": {"name": self.name}}
        return self.mode


@dataclass(frozen=True, slots=True)
class ToolCall:
    """An assistant's call: ``{"id", "type": "function", "function": {name, arguments}}``."""

    id: str
    name: str
    arguments: str
    """The arguments as the model wrote them: a JSON string (not necessarily valid JSON)."""

    def parsed_arguments(self) -> Any:
        """The arguments decoded (ValueError when they are not JSON)."""
        return json.loads(self.arguments)

    def to_json(self) -> Json:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """``text``, ``json_object``, or ``json_schema`` with its name, schema and strictness."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema: Mapping[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None

    def to_json(self) -> Json:
        if self.type != "json_schema":
            return {"type": self.type}
        inner: Json = {"name": self.name}
        for key, value in (
            ("description", self.description),
            ("schema", self.schema),
            ("strict", self.strict),
        ):
            if value is not None:
                inner[key] = value
        return {"type": "json_schema", "json_schema": inner}


def parse_tools(value: Any, where: str = "tools") -> tuple[FunctionTool, ...]:
    """A list of function tools with distinct names."""
    if not isinstance(value, list):
        raise InvalidShape(where, f"is {_kind(value)}", "write a list of function tools")
    tools = tuple(parse_tool(item, f"{where}[{index}]") for index, item in enumerate(value))
    seen: set[str] = set()
    for index, tool in enumerate(tools):
        if tool.name in seen:
            raise InvalidShape(
                f"{where}[{index}].function.name",
                f"{tool.name!r} is defined twice",
                "give each tool a distinct name",
            )
        seen.add(tool.name)
    return tools


def parse_tool(value: Any, where: str = "tool") -> FunctionTool:
    """One ``ChatCompletionTool``; its parameters must be a valid JSON Schema of an object."""
    item = _object(value, where, '{"type": "function", "function": {"name": ...}}')
    if item.get("type") != "function":
        raise InvalidShape(
            f"{where}.type",
            f"is {item.get('type')!r}",
            'set "type": "function" (the only tool type here)',
        )
    function = _object(
        item.get("function"), f"{where}.function", '{"name": ..., "parameters": ...}'
    )
    _known(function, f"{where}.function", ("name", "description", "parameters", "strict"))
    name = _name(function.get("name"), f"{where}.function.name")
    description = _optional_string(function.get("description"), f"{where}.function.description")
    parameters = function.get("parameters")
    if parameters is not None:
        parameters = _object(parameters, f"{where}.function.parameters", "write a JSON Schema")
        if parameters.get("type", "object") != "object":
            raise InvalidShape(
                f"{where}.function.parameters.type",
                f"is {parameters.get('type')!r}",
                'the parameters are a JSON Schema of "type": "object"',
            )
        check_schema(parameters, f"{where}.function.parameters")
    strict = _optional_bool(function.get("strict"), f"{where}.function.strict")
    return FunctionTool(name, description, parameters, strict)


def parse_tool_choice(
    value: Any, tools: Sequence[FunctionTool] | None = None, where: str = "tool_choice"
) -> ToolChoice:
    """``none``/``auto``/``required`` or a named function; with ``tools``, a named function or
    ``required`` must have a tool to call."""
    if isinstance(value, str):
        if value not in TOOL_CHOICE_MODES:
            raise InvalidShape(
                where,
                f"is {value!r}",
                f"use one of {', '.join(TOOL_CHOICE_MODES)} or "
                '{"type": "function", "function": {"name": ...}}',
            )
        if value == "required" and tools is not None and not tools:
            raise InvalidShape(where, "is 'required' but there are no tools", "add `tools`")
        return ToolChoice(value)  # type: ignore[arg-type]  # checked against the modes
    item = _object(
        value,
        where,
        f'use one of {", ".join(TOOL_CHOICE_MODES)} or {{"type": "function", "function": '
        '{"name": ...}}',
    )
    if item.get("type") != "function":
        raise InvalidShape(f"{where}.type", f"is {item.get('type')!r}", 'set "type": "function"')
    function = _object(item.get("function"), f"{where}.function", '{"name": ...}')
    name = _name(function.get("name"), f"{where}.function.name")
    if tools is not None and name not in {tool.name for tool in tools}:
        raise InvalidShape(
            f"{where}.function.name",
            f"{name!r} is not among the tools ({_names(tools)})",
            "name one of the tools",
        )
    return ToolChoice("function", name)


def parse_tool_calls(
    value: Any,
    where: str = "tool_calls",
    *,
    tools: Sequence[FunctionTool] | None = None,
    json_arguments: bool = True,
) -> tuple[ToolCall, ...]:
    """A non-empty list of tool calls with distinct ids (see ``parse_tool_call``)."""
    if not isinstance(value, list) or not value:
        raise InvalidShape(where, f"is {_kind(value)}", "write a non-empty list of tool calls")
    calls = tuple(
        parse_tool_call(item, f"{where}[{index}]", tools=tools, json_arguments=json_arguments)
        for index, item in enumerate(value)
    )
    seen: set[str] = set()
    for index, call in enumerate(calls):
        if call.id in seen:
            raise InvalidShape(
                f"{where}[{index}].id", f"{call.id!r} is used twice", "give each call its own id"
            )
        seen.add(call.id)
    return calls


def parse_tool_call(
    value: Any,
    where: str = "tool_call",
    *,
    tools: Sequence[FunctionTool] | None = None,
    json_arguments: bool = True,
) -> ToolCall:
    """One ``ChatCompletionMessageToolCall``. With ``tools`` its name must be among them; with
    ``json_arguments`` (the default) its arguments must decode as JSON. A model's reply is read
    with ``json_arguments=False``: invalid arguments are then the model's fault to grade."""
    item = _object(value, where, '{"id": ..., "type": "function", "function": {...}}')
    call_id = item.get("id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidShape(f"{where}.id", f"is {call_id!r}", "give the call a non-empty string id")
    if item.get("type", "function") != "function":
        raise InvalidShape(f"{where}.type", f"is {item.get('type')!r}", 'set "type": "function"')
    function = _object(item.get("function"), f"{where}.function", '{"name": ..., "arguments": ...}')
    name = _name(function.get("name"), f"{where}.function.name")
    if tools is not None and name not in {tool.name for tool in tools}:
        raise InvalidShape(
            f"{where}.function.name",
            f"{name!r} is not among the tools ({_names(tools)})",
            "call one of the tools, or add its definition to `tools`",
        )
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        raise InvalidShape(
            f"{where}.function.arguments",
            f"is {_kind(arguments)}",
            'write the arguments as a JSON string, e.g. "{\\"city\\": \\"Paris\\"}"',
        )
    if json_arguments:
        try:
            json.loads(arguments)
        except ValueError as error:
            raise InvalidShape(
                f"{where}.function.arguments",
                f"is not valid JSON ({error})",
                "write the arguments as a JSON object encoded in a string",
            ) from None
    return ToolCall(call_id, name, arguments)


def parse_response_format(value: Any, where: str = "response_format") -> ResponseFormat:
    """``{"type": "text"}``, ``{"type": "json_object"}`` or ``{"type": "json_schema",
    "json_schema": {name, description?, schema?, strict?}}``; a schema must be valid."""
    item = _object(value, where, f'{{"type": ...}}, one of {", ".join(RESPONSE_FORMATS)}')
    kind = item.get("type")
    if kind not in RESPONSE_FORMATS:
        raise InvalidShape(
            f"{where}.type", f"is {kind!r}", f"use one of {', '.join(RESPONSE_FORMATS)}"
        )
    if kind != "json_schema":
        return ResponseFormat(kind)
    inner = _object(
        item.get("json_schema"), f"{where}.json_schema", '{"name": ..., "schema": {...}}'
    )
    _known(inner, f"{where}.json_schema", ("name", "description", "schema", "strict"))
    name = _name(inner.get("name"), f"{where}.json_schema.name")
    description = _optional_string(inner.get("description"), f"{where}.json_schema.description")
    schema = inner.get("schema")
    if schema is not None:
        schema = _object(schema, f"{where}.json_schema.schema", "write a JSON Schema")
        check_schema(schema, f"{where}.json_schema.schema")
    strict = _optional_bool(inner.get("strict"), f"{where}.json_schema.strict")
    return ResponseFormat("json_schema", name, schema, strict, description)


def check_schema(schema: Any, where: str = "schema") -> None:
    """Raise ``InvalidShape`` unless ``schema`` is a valid JSON Schema (by its own ``$schema``
    draft, else the latest)."""
    from jsonschema import exceptions, validators  # deliberately lazy: a slow import

    try:
        validators.validator_for(schema).check_schema(schema)
    except exceptions.SchemaError as error:
        path = "".join(_index(part) for part in error.absolute_path)
        raise InvalidShape(
            f"{where}{path}",
            f"is not valid JSON Schema ({error.message})",
            "fix the schema (see json-schema.org)",
        ) from None


def schema_error(value: Any, schema: Mapping[str, Any]) -> str | None:
    """None when ``value`` is valid against ``schema``; else the most relevant error as
    ``<path>: <message>`` (the path in ``a.b[0]`` form, ``(root)`` for the whole value)."""
    from jsonschema import exceptions, validators

    validator = validators.validator_for(schema)(schema)
    error = exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return None
    path = "".join(_index(part) for part in error.absolute_path).lstrip(".")
    return f"{path or '(root)'}: {error.message}"


def _index(part: str | int) -> str:
    return f"[{part}]" if isinstance(part, int) else f".{part}"


def _object(value: Any, where: str, fix: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidShape(where, f"is {_kind(value)}", f"write an object: {fix}")
    return value


def _known(item: Mapping[str, Any], where: str, keys: Sequence[str]) -> None:
    unknown = sorted(set(item) - set(keys))
    if unknown:
        raise InvalidShape(
            where,
            f"has unknown key(s) {', '.join(map(repr, unknown))}",
            f"its keys are {', '.join(keys)}",
        )


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise InvalidShape(
            where,
            f"is {value!r}" if isinstance(value, str) else f"is {_kind(value)}",
            "use 1-64 of a-z, A-Z, 0-9, _ and -",
        )
    return value


def _optional_string(value: Any, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidShape(where, f"is {_kind(value)}", "write a string")
    return value


def _optional_bool(value: Any, where: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise InvalidShape(where, f"is {_kind(value)}", "write true or false")
    return value


def _names(tools: Sequence[FunctionTool]) -> str:
    return ", ".join(tool.name for tool in tools) or "none"


def _kind(value: Any) -> str:
    if value is None:
        return "missing (or null)"
    kinds = ((bool, "a boolean"), (str, "a string"), (Mapping, "an object"), (list, "a list"))
    found = next((name for cls, name in kinds if isinstance(value, cls)), None)
    if found is None:
        found = "a number" if isinstance(value, int | float) else type(value).__name__
    return f"{found} ({_short(value)})" if found != "an object" else found


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "..."
