"""Typed request bodies: every parameter is checked here, before any work is queued.

Bodies are parsed and validated in one pass by pydantic from the raw bytes (invalid UTF-8 and
absurdly deep nesting are JSON errors there), strictly: ``"0.5"`` is not a temperature. A
failure becomes one OpenAI-shaped 400 naming the parameter, the value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from distill_server.errors import ApiError, bad_request
from distill_shapes.tools import (
    FunctionTool,
    InvalidShape,
    ResponseFormat,
    ToolCall,
    ToolChoice,
    parse_response_format,
    parse_tool_calls,
    parse_tool_choice,
    parse_tools,
)

_INT64 = 2**63
_BODY_HINT = (
    "We could not parse the JSON body of your request: {reason}. The API expects a JSON "
    "object encoded as UTF-8, sent with Content-Type: application/json."
)

Unit = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Penalty = Annotated[float, Field(ge=-2, le=2, allow_inf_nan=False)]
MetadataKey = Annotated[str, StringConstraints(max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=16)]
"""OpenAI's metadata: at most 16 pairs, keys of at most 64 characters, values of 512."""


class _Strict(BaseModel):
    # Unknown fields are ignored as long as they are valid JSON: the SDKs send parameters
    # this server does not use (logit_bias, user), and refusing them breaks clients.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class ContentPart(_Strict):
    type: str
    text: str | None = None


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[Any] | None = None
    """An assistant's calls; read by ``distill_shapes.tools`` in ``tool_fields``."""
    tool_call_id: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text or "" for part in self.content)
        return self.content or ""


class StreamOptions(_Strict):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class ChatRequest(_Strict):
    """``CreateChatCompletionRequest``: the parameters this server reads, each checked."""

    model: Annotated[str, StringConstraints(min_length=1)]
    messages: Annotated[list[Message], Field(min_length=1)]
    temperature: Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)] | None = None
    top_p: Unit | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: Annotated[int, Field(ge=-_INT64, lt=_INT64)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    store: bool | None = None
    metadata: Metadata | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    user: str | None = None
    # Read by ``distill_shapes.tools`` in ``tool_fields``, whose errors name the exact field.
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    response_format: Any = None

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def format(self) -> ResponseFormat | None:
        """``response_format`` read, or a 400 naming what is wrong in it (its schema too)."""
        if self.response_format is None:
            return None
        try:
            return parse_response_format(self.response_format)
        except InvalidShape as error:
            raise bad_request(f"{error}.", error.field, "invalid_value") from None


@dataclass(frozen=True, slots=True)
class ToolFields:
    """A chat request's tools, tool choice, calls in its messages and response format, read
    and checked by ``distill_shapes.tools``."""

    tools: tuple[FunctionTool, ...]
    tool_choice: ToolChoice | None
    """None when there are no tools; else the request's, ``auto`` by default."""
    parallel_tool_calls: bool
    calls: tuple[tuple[ToolCall, ...], ...]
    """Each message's tool calls (empty for most)."""
    response_format: ResponseFormat | None


def tool_fields(request: ChatRequest) -> ToolFields:
    """The request's tool fields, or a 400 naming the field at fault (e.g.
    ``tools[0].function.parameters``) in OpenAI's error shape."""
    try:
        tools = parse_tools(request.tools) if request.tools is not None else ()
        choice = None
        if request.tool_choice is not None:
            choice = parse_tool_choice(request.tool_choice, tools)
        elif tools:
            choice = ToolChoice("auto")
        calls = tuple(
            parse_tool_calls(m.tool_calls, f"messages[{i}].tool_calls", json_arguments=False)
            if m.tool_calls is not None
            else ()
            for i, m in enumerate(request.messages)
        )
        response_format = request.format()
    except InvalidShape as error:
        text = f"Invalid value for {error.field!r}: {error.problem}; {error.fix}."
        raise bad_request(text, error.field, "invalid_value") from None
    for index, message in enumerate(request.messages):
        if message.tool_calls is not None and message.role != "assistant":
            raise bad_request(
                f"messages[{index}] ({message.role}) has `tool_calls`; only assistant messages "
                "call tools.",
                f"messages[{index}].tool_calls",
            )
        if message.role == "tool" and not message.tool_call_id:
            raise bad_request(
                f"Missing required parameter: 'messages[{index}].tool_call_id'. A tool message "
                "names the call it answers by its id.",
                f"messages[{index}].tool_call_id",
                "missing_required",
            )
    parallel = request.parallel_tool_calls is not False
    return ToolFields(tools, choice, parallel, calls, response_format)


class UpdateCompletion(_Strict):
    metadata: Metadata | None


Auto = Literal["auto"]


class Hyperparameters(_Strict):
    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] | None = None
    learning_rate_multiplier: (
        Auto | Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)] | None
    ) = None
    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] | None = None
    # This server's own LoRA settings, kept here and checked by lora_settings.py, whose
    # messages name the key and the fix.
    lora_rank: Any = None
    lora_alpha: Any = None
    lora_target_modules: Any = None


class Supervised(_Strict):
    hyperparameters: Hyperparameters | None = None


class Method(_Strict):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: Supervised | None = None
    dpo: dict[str, Any] | None = None
    reinforcement: dict[str, Any] | None = None


class JobRequest(_Strict):
    """``CreateFineTuningJobRequest``."""

    model: Annotated[str, StringConstraints(min_length=1)]
    training_file: Annotated[str, StringConstraints(min_length=1)]
    validation_file: str | None = None
    suffix: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    seed: Annotated[int, Field(ge=0, le=2147483647)] | None = None
    metadata: Metadata | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    integrations: list[dict[str, Any]] | None = None


class BatchCreate(_Strict):
    """``CreateBatchRequest``; ``endpoint`` and ``completion_window`` are checked by
    ``Batches.create``, whose messages say what this server runs."""

    input_file_id: Annotated[str, StringConstraints(min_length=1)]
    endpoint: Annotated[str, StringConstraints(min_length=1)]
    completion_window: Annotated[str, StringConstraints(min_length=1)]
    metadata: Metadata | None = None
    output_expires_after: dict[str, Any] | None = None


Body = TypeVar("Body", bound=BaseModel)


def parse(model: type[Body], raw: bytes) -> Body:
    """``raw`` validated as ``model``, or a 400 naming the first broken parameter."""
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise _api_error(exc) from None


def _api_error(exc: ValidationError) -> ApiError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        reason = first.get("ctx", {}).get("error", first["msg"])
        return bad_request(_BODY_HINT.format(reason=reason), code="invalid_json")
    param = _param(first["loc"])
    if first["type"] == "missing":
        return bad_request(f"Missing required parameter: {param!r}.", param, "missing_required")
    if first["type"] == "model_type" and not first["loc"]:
        return bad_request("The request body must be a JSON object.", None, "invalid_type")
    # A union (``stop``: a string or a list) fails once per branch; say what each allows.
    allowed = dict.fromkeys(e["msg"] for e in errors if _param(e["loc"]) == param)
    shown = repr(first["input"])
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    message = f"Invalid value for {param!r}: {shown}. {'; or '.join(allowed)}."
    return bad_request(message, param, "invalid_value")


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _param(loc: tuple[int | str, ...]) -> str:
    """``('messages', 0, 'role')`` -> ``messages[0].role``; a union's branch tags end it."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        if part in _TYPE_TAGS or not (part.isidentifier() and part.islower()):
            break
        out += f".{part}" if out else part
    return out or "body"
