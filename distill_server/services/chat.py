"""Chat completions: generation through the batcher, and stored completions."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from distill_server.engine.batcher import Batcher
from distill_server.errors import ApiError, bad_request, not_found
from distill_server.imports import IMPORT_LOCK
from distill_server.models import ModelSource, Registry, Resolved
from distill_server.services.schemas import ChatRequest, ToolFields, tool_fields
from distill_server.store import Record, Store, matches, new_id, paginate
from distill_server.weights.chat_format import CallStream, Reply, parse_reply
from distill_shapes.tools import FunctionTool, ResponseFormat, ToolCall, ToolChoice

if TYPE_CHECKING:
    from distill_server.engine.constrain import Constraint
    from distill_server.engine.decode import Engine, GenRequest, GenResult


STOPPING = "The server is shutting down."


class Serving:
    """One batcher (and so one loaded model) per base model, created on first use."""

    def __init__(self) -> None:
        self._batchers: dict[str, Batcher] = {}
        self._lock = threading.Lock()
        self._stopped = False

    def batcher(self, source: ModelSource) -> Batcher:
        with self._lock:
            if self._stopped:
                raise ApiError(503, STOPPING, type="server_error")
            if source.id not in self._batchers:
                self._batchers[source.id] = Batcher(lambda: _load(source))
            return self._batchers[source.id]

    def stop_requests(self) -> None:
        """The server is stopping: every request waiting on a model is cancelled now (its
        client gets a 503 at once), and later ones are refused."""
        with self._lock:
            self._stopped = True
            batchers = list(self._batchers.values())
        for batcher in batchers:
            batcher.stop_requests()

    def close(self) -> None:
        with self._lock:
            self._stopped = True
            for batcher in self._batchers.values():
                batcher.close()
            self._batchers.clear()


def _load(source: ModelSource) -> Engine:
    with IMPORT_LOCK:
        from distill_server.engine.decode import Engine

    return Engine(source)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A checked chat request, ready for the batcher: nothing about it can fail later but
    decoding itself (and the prompt's length, which only the tokenizer knows)."""

    model: str
    resolved: Resolved
    generation: GenRequest
    streamed: bool
    """The engine hands the answer's pieces to ``on_text`` as they decode."""
    messages: tuple[dict[str, Any], ...]
    """Role and content, with an assistant's ``tool_calls`` and a tool's ``tool_call_id``."""
    store: bool
    metadata: dict[str, str] | None
    tools: tuple[FunctionTool, ...] = ()
    tool_choice: ToolChoice | None = None
    """None without tools; else the request's (``auto`` by default)."""
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    """The request's, checked; decoding that enforces it reads it from here."""

    @property
    def reads_calls(self) -> bool:
        """Whether the reply is read for tool calls: tools given, and choice not ``none``."""
        return bool(self.tools) and self.tool_choice is not None and self.tool_choice.mode != "none"

    def call_stream(self) -> CallStream:
        """A reader of the streamed reply's tool calls."""
        names = {tool.name for tool in self.tools}
        return CallStream(names, parallel=self.parallel_tool_calls)

    def reply(self, text: str) -> Reply:
        """The finished reply: its content and, when calls are read, its tool calls."""
        if not self.reads_calls:
            return Reply(text)
        names = {tool.name for tool in self.tools}
        return parse_reply(text, names, parallel=self.parallel_tool_calls)


class Chat:
    """``/chat/completions`` and its stored-completion endpoints."""

    def __init__(self, store: Store, registry: Registry, serving: Serving) -> None:
        self._store = store
        self._registry = registry
        self._serving = serving

    def prepare(
        self, request: ChatRequest, on_text: Callable[[str], None] | None = None
    ) -> Prepared:
        """Resolve the model and check what the schema cannot (``n``, the context).

        ``on_text`` receives the answer's pieces as they decode, on the decoding thread, when
        the engine streams them (``Prepared.streamed`` says whether it does)."""
        resolved = self._registry.resolve(request.model)
        if request.n not in (None, 1):
            raise bad_request("Only n=1 is supported by the local server.", "n")
        context = resolved.base.context_length()
        if request.limit is not None and request.limit > context:
            param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
            raise bad_request(
                f"`{param}` is too large: {request.limit}. The model {request.model!r} has a "
                f"context of {context} tokens, prompt included; ask for at most that many.",
                param,
                "invalid_value",
            )
        fields = tool_fields(request)
        messages = tuple(
            _message(m.role, m.text(), calls, m.tool_call_id)
            for m, calls in zip(request.messages, fields.calls, strict=True)
        )
        tools = tuple(tool.to_json() for tool in fields.tools)
        answer_format = fields.response_format is not None and fields.response_format.type != "text"
        constraint = _calls_constraint(fields, answer_format)
        constraint = constraint or _constraint(request)
        generation, streamed = _generation(request, messages, tools, constraint, on_text)
        return Prepared(
            model=request.model,
            resolved=resolved,
            generation=generation,
            streamed=streamed,
            messages=messages,
            store=bool(request.store),
            metadata=dict(request.metadata) if request.metadata is not None else None,
            tools=fields.tools,
            tool_choice=fields.tool_choice,
            parallel_tool_calls=fields.parallel_tool_calls,
            response_format=fields.response_format,
        )

    def submit(self, prepared: Prepared) -> Future[GenResult]:
        """Queue the request; cancelling the returned future withdraws it."""
        batcher = self._serving.batcher(prepared.resolved.base)
        return batcher.submit(prepared.resolved.adapter, prepared.generation)

    def completion(self, prepared: Prepared, result: GenResult) -> dict[str, Any]:
        """The ``chat.completion`` body of a finished request (stored when asked)."""
        reply = prepared.reply(result.text)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": reply.content,
            "refusal": None,
            "annotations": [],
        }
        finish = result.finish_reason
        if reply.calls:
            message["tool_calls"] = [call.to_json() for call in reply.calls]
            finish = "tool_calls"
        choice = {"index": 0, "message": message, "finish_reason": finish}
        body: dict[str, Any] = {
            "id": new_id("chatcmpl-"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": prepared.model,
            "choices": [{**choice, "logprobs": None}],
            "usage": usage(result),
            "service_tier": "default",
            "system_fingerprint": "fp_local",
            "metadata": prepared.metadata,
        }
        if prepared.store:
            extra: dict[str, Any] = {"messages": list(prepared.messages)}
            if prepared.tools:
                extra["tools"] = [tool.to_json() for tool in prepared.tools]
            self._store.put(Record("completion", body["id"], body, extra))
        return body

    def list(
        self,
        model: str | None,
        metadata: Mapping[str, str],
        after: str | None,
        limit: int,
        order: str,
    ) -> dict[str, Any]:
        bodies = [r.body for r in self._store.list("completion")]
        bodies = [b for b in bodies if (not model or b["model"] == model)]
        bodies = [b for b in bodies if matches(b.get("metadata"), metadata)]
        return paginate(bodies, after=after, limit=limit, newest_first=order == "desc").body()

    def retrieve(self, completion_id: str) -> dict[str, Any]:
        return self._record(completion_id).body

    def update(self, completion_id: str, metadata: Mapping[str, str] | None) -> dict[str, Any]:
        record = self._record(completion_id)
        body = {**record.body, "metadata": None if metadata is None else dict(metadata)}
        self._store.put(Record("completion", completion_id, body, record.extra))
        return body

    def delete(self, completion_id: str) -> dict[str, Any]:
        self._record(completion_id)
        self._store.delete("completion", completion_id)
        return {"object": "chat.completion.deleted", "id": completion_id, "deleted": True}

    def messages(
        self, completion_id: str, after: str | None, limit: int, order: str
    ) -> dict[str, Any]:
        stored = self._record(completion_id).extra["messages"]
        bodies = [
            {
                "id": f"{completion_id}-{i}",
                **m,
                "refusal": None,
                "name": None,
                "content_parts": None,
            }
            for i, m in enumerate(stored)
        ]
        return paginate(bodies, after=after, limit=limit, newest_first=order == "desc").body()

    def _record(self, completion_id: str) -> Record:
        record = self._store.get("completion", completion_id)
        if record is None:
            raise not_found("chat completion", completion_id, "completion_id")
        return record


def usage(result: GenResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def _message(
    role: str, content: str, calls: tuple[ToolCall, ...], call_id: str | None
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": role, "content": content}
    if calls:
        message["tool_calls"] = [call.to_json() for call in calls]
    if role == "tool" and call_id is not None:
        message["tool_call_id"] = call_id
    return message


def _generation(
    request: ChatRequest,
    messages: tuple[dict[str, Any], ...],
    tools: tuple[dict[str, Any], ...],
    constraint: Constraint | None,
    on_text: Callable[[str], None] | None,
) -> tuple[GenRequest, bool]:
    with IMPORT_LOCK:
        from distill_server.engine.decode import GenRequest

    template = [
        {**m, "role": "system" if m["role"] == "developer" else m["role"]} for m in messages
    ]
    fields: dict[str, Any] = {
        "messages": tuple(template),
        "max_tokens": request.limit,
        "temperature": 1.0 if request.temperature is None else request.temperature,
        "top_p": 1.0 if request.top_p is None else request.top_p,
        "seed": request.seed,
        "stop": request.stops,
    }
    if tools:
        fields["tools"] = tools
    # Engines that stream pieces of text take an ``on_text`` callback; without one, the text
    # is sent in one piece when the decode ends.
    streamed = on_text is not None and "on_text" in _field_names(GenRequest)
    if streamed:
        fields["on_text"] = on_text
    if constraint is not None:
        fields["constraint"] = constraint
    return GenRequest(**fields), streamed


def _calls_constraint(fields: ToolFields, answer_format: bool) -> Constraint | None:
    """The grammar of the tool calls ``tool_choice`` asks for: ``required``, one or more calls
    (one without ``parallel_tool_calls``) to the request's tools; a named function, calls to
    it alone; ``auto`` with a ``strict`` tool, text in which no call begins, or such calls (a
    call the model begins is a valid one). Each call's arguments follow its tool's ``parameters``
    (what llguidance cannot enforce is a 400 for a ``strict`` tool, left unenforced for the
    others). ``auto`` without strict tools decodes freely and the reply is read for calls
    afterwards; ``none`` decodes freely and the reply is not read for calls. With a
    ``response_format`` (``answer_format``), ``auto`` leaves the answer to its grammar.
    """
    choice = fields.tool_choice
    if choice is None or not fields.tools or choice.mode == "none":
        return None
    strict = any(tool.strict for tool in fields.tools)
    if choice.mode == "auto" and (answer_format or not strict):
        return None
    with IMPORT_LOCK:
        from distill_server.engine.constrain import Constraint, UnsupportedSchema

    try:
        return Constraint.tool_calls(
            fields.tools,
            choice.name,
            fields.parallel_tool_calls,
            optional=choice.mode == "auto",
        )
    except UnsupportedSchema as error:
        raise bad_request(
            f"Invalid 'tools': a strict tool's parameters use what this server cannot enforce "
            f"({error}); leave that out of the schema, or set strict to false to have the rest "
            "enforced.",
            "tools",
            "invalid_value",
        ) from None


def _constraint(request: ChatRequest) -> Constraint | None:
    """The grammar ``response_format`` asks the answer to follow.

    ``json_object``: any JSON object. ``json_schema``: JSON valid against the schema, enforced
    with or without ``strict`` (OpenAI's models only try without it; a small model needs the
    grammar). A schema that uses what the grammar cannot enforce (``not``, ``uniqueItems``,
    ``if``/``then``, an unknown ``format``) is a 400 naming it with ``strict``; without, the
    rest of the schema is enforced, or nothing when even that cannot be.
    """
    shape = request.format()
    if shape is None or shape.type == "text":
        return None
    with IMPORT_LOCK:
        from distill_server.engine.constrain import Constraint, UnsupportedSchema

    if shape.type == "json_object":
        return Constraint.json_object()
    schema = shape.schema if shape.schema is not None else {}
    try:
        return Constraint.json_schema(schema)
    except UnsupportedSchema as error:
        if shape.strict:
            raise bad_request(
                f"Invalid 'response_format.json_schema.schema': this server cannot enforce it "
                f"({error}); leave that out of the schema, or set strict to false to have the "
                "rest enforced.",
                "response_format.json_schema.schema",
                "invalid_value",
            ) from None
    try:
        return Constraint.json_schema(schema, lenient=True)
    except UnsupportedSchema:
        return None


def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))
