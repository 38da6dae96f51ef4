"""Roles (teacher, student, finetuned, judge) and the clients that talk to their endpoints.

A role is an endpoint, a model id and sampling parameters. Every chat call made through a
role goes through :func:`call_chat`, which returns a :class:`CallRecord`: the messages, the
reply, usage and latency that the report, the gate and the training set are built from.
"""

from __future__ import annotations

import difflib
import os
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from distill_shapes.tools import ToolCall

if TYPE_CHECKING:
    import ssl

    import openai

ROLES = ("teacher", "student", "finetuned", "judge")
Role = Literal["teacher", "student", "finetuned", "judge"]
Message = dict[str, Any]

# Parameters a role may set; the SDK rejects anything else in a confusing way, so we check early.
SAMPLING_PARAMS = frozenset(
    {
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "seed",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "response_format",
        "reasoning_effort",
        "logit_bias",
        "n",
    }
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    kind: Literal["openai", "local", "url"]
    base_url: str | None = None

    def __str__(self) -> str:
        return self.base_url if self.kind == "url" and self.base_url else self.kind


def parse_endpoint(text: str) -> Endpoint:
    text = text.strip()
    if text in ("openai", "local"):
        return Endpoint(text)  # type: ignore[arg-type]
    if text.startswith(("http://", "https://")):
        return Endpoint("url", text.rstrip("/"))
    raise ValueError(
        f"endpoint {text!r} is not valid; use 'openai', 'local' or a base URL such as "
        "http://127.0.0.1:8000/v1"
    )


@dataclass(frozen=True, slots=True)
class RoleConfig:
    name: str
    model: str | None
    endpoint: Endpoint = Endpoint("openai")
    params: Mapping[str, Any] = field(default_factory=dict)
    api_key_env: str | None = None

    def api_key(self) -> str | None:
        """The key from the environment only: never from a file, never logged."""
        names = [self.api_key_env] if self.api_key_env else []
        names += [f"DISTILL_{self.name.upper()}_API_KEY", "OPENAI_API_KEY"]
        return next((os.environ[n] for n in names if os.environ.get(n)), None)


class MissingApiKey(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One chat completion made for a role."""

    role: str
    model: str
    messages: tuple[Message, ...]
    params: Mapping[str, Any]
    reply: str
    completion_id: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float  # the round trip as the client saw it, waiting in queues included
    stored: bool = False
    server_s: float | None = None  # the endpoint's processing time, where it says it
    tool_calls: tuple[ToolCall, ...] = ()
    """The reply's ``message.tool_calls`` (its ``reply`` text is then often empty)."""
    batch_id: str | None = None
    """The Batch API batch that answered it (``--distill-batch``; None: a live call)..."""
    custom_id: str | None = None
    """...and its request's line there."""

    def to_json(self) -> dict[str, Any]:
        # The other fields are scalars: asdict would only deep-copy the messages and params
        # for them to be replaced.
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["messages"] = list(self.messages)
        data["params"] = dict(self.params)
        data["tool_calls"] = [call.to_json() for call in self.tool_calls]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CallRecord:
        calls = tuple(
            ToolCall(c["id"], c["function"]["name"], c["function"]["arguments"])
            for c in data.get("tool_calls") or ()
        )
        return cls(**{**data, "messages": tuple(data["messages"]), "tool_calls": calls})


REMOTE_TIMEOUT = 120.0
# A CPU batch of long few-shot prompts can keep a request queued for minutes; a client that
# gives up and retries only adds work to the queue.
LOCAL_TIMEOUT = 900.0
LOCAL_API_KEY_ENV = "DISTILL_SERVER_API_KEY"
"""The embedded server's API key, when it (or the distill-server it shares) requires one."""


def make_openai(
    role: RoleConfig,
    *,
    local_url: Callable[[], str] | None,
    timeout: float | None,
    max_retries: int,
    transport: Any = None,
    tls: ssl.SSLContext | None = None,
) -> openai.OpenAI:
    """The SDK client for a role's endpoint. ``local_url`` starts the embedded server on demand;
    ``transport`` (an httpx2 transport) is the one cassettes record and replay through; ``tls``
    is a TLS context shared by the session's clients (:func:`tls_context`), one built for this
    client if None."""
    import openai

    base_url: str | None
    if role.endpoint.kind == "local":
        if local_url is None:
            raise RuntimeError("the embedded server is not available in this session")
        base_url, key = local_url(), os.environ.get(LOCAL_API_KEY_ENV) or "local"
    elif role.endpoint.kind == "url":
        base_url, key = role.endpoint.base_url, role.api_key() or "unused"
    else:
        base_url, key = os.environ.get("OPENAI_BASE_URL") or None, role.api_key() or ""
        if not key:
            raise MissingApiKey(
                f"no API key for role {role.name!r} on the OpenAI endpoint; set OPENAI_API_KEY "
                f"or DISTILL_{role.name.upper()}_API_KEY (or ini distill_{role.name}_api_key_env)"
            )
    if timeout is None:
        timeout = LOCAL_TIMEOUT if role.endpoint.kind == "local" else REMOTE_TIMEOUT
    extra: dict[str, Any] = {"transport": transport} if transport is not None else {}
    if tls is not None:
        extra["verify"] = tls
    http_client = openai.DefaultHttpx2Client(
        timeout=timeout, event_hooks={"response": [_no_retry_when_out_of_quota]}, **extra
    )
    return openai.OpenAI(
        api_key=key,
        base_url=base_url,
        timeout=timeout,
        max_retries=max_retries,
        http_client=http_client,
    )


def tls_context(*, offline: bool = False) -> ssl.SSLContext:
    """The TLS context an SDK client builds for itself by default (the system's certificates,
    or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``), built once to be shared: loading the
    certificates is the slow part of making a client (about 0.3 s).

    ``offline`` (a replay with record mode ``none``: every request is answered by the
    cassettes, none reaches a server): a context that verifies as strictly but trusts no
    certificate, so nothing is loaded; a connection that got out anyway would fail its check.
    """
    if offline:
        return _trusting_nothing()
    import httpx2

    return httpx2.create_ssl_context()


def _trusting_nothing() -> ssl.SSLContext:
    import ssl

    # PROTOCOL_TLS_CLIENT: certificates required and host names checked, as by default.
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def _no_retry_when_out_of_quota(response: Any) -> None:
    """A 429 with code ``insufficient_quota`` is a billing problem, not a rate limit.

    The SDK retries every 429; its ``x-should-retry`` header is the public way to stop it, so
    we set that header on such a response before the SDK sees it.
    """
    if response.status_code == 429:
        response.read()
        if b"insufficient_quota" in response.content:
            response.headers["x-should-retry"] = "false"


def call_chat(
    client: openai.OpenAI,
    role: RoleConfig,
    messages: Sequence[Message],
    *,
    params: Mapping[str, Any] | None = None,
    store: Mapping[str, str] | None = None,
) -> CallRecord:
    """Send one chat completion for ``role``; ``store`` is the metadata of a stored completion."""
    replay = _REPLAYS.get(client)
    if replay is not None:
        replayed = _replayed(replay, client, role, messages, params, store)
        if replayed is not None:
            return replayed
    return send_chat(client, role, messages, params=params, store=store)[1]


def send_chat(
    client: openai.OpenAI,
    role: RoleConfig,
    messages: Sequence[Message],
    *,
    params: Mapping[str, Any] | None = None,
    store: Mapping[str, str] | None = None,
) -> tuple[Any, CallRecord]:
    """Like :func:`call_chat`, also returning the SDK's ``ChatCompletion``."""
    model, merged, extra = _chat_request(role, params, store)
    sent = list(messages)
    if "extra_body" not in merged and _plain_json(sent):
        # The SDK rewrites every message against its typed schema before sending it (about a
        # millisecond for a few-shot prompt, more than the rest of a replayed call); plain JSON
        # data comes out unchanged, so it goes in as the body's own "messages" (extra_body
        # replaces the empty list in place): the same bytes on the wire.
        extra["extra_body"] = {"messages": sent}
        sent = []
    started = time.perf_counter()
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=sent,  # type: ignore[arg-type]  # plain dicts, checked at load
        **merged,
        **extra,
    )
    latency = time.perf_counter() - started  # the round trip, waiting in queues included
    response = raw.parse()
    usage = response.usage
    message = response.choices[0].message if response.choices else None
    choice = message.content if message is not None else None
    return response, CallRecord(
        role=role.name,
        model=response.model or model,
        messages=tuple(dict(m) for m in messages),
        params=merged,
        reply=choice or "",
        completion_id=response.id,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        latency_s=latency,
        stored=bool(store),
        server_s=_processing_s(raw.headers.get("openai-processing-ms")),
        tool_calls=reply_tool_calls(message),
    )


def reply_tool_calls(message: Any) -> tuple[ToolCall, ...]:
    """A reply message's function tool calls (``message.tool_calls``; other kinds are left
    out), arguments as the model wrote them."""
    found = []
    for call in getattr(message, "tool_calls", None) or ():
        function = getattr(call, "function", None)
        if function is not None:
            found.append(ToolCall(call.id, function.name, function.arguments))
    return tuple(found)


def _chat_request(
    role: RoleConfig, params: Mapping[str, Any] | None, store: Mapping[str, str] | None
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A call's model, its sampling parameters, and the fields of a stored completion."""
    model = (params or {}).get("model") or role.model
    if not model:
        raise RuntimeError(
            f"role {role.name!r} has no model; set ini distill_{role.name}_model, "
            f"DISTILL_{role.name.upper()}_MODEL or --distill-model {role.name}=MODEL"
        )
    merged = {k: v for k, v in {**role.params, **(params or {})}.items() if k != "model"}
    extra: dict[str, Any] = {"store": True, "metadata": dict(store)} if store else {}
    return model, merged, extra


def chat_body(
    role: RoleConfig,
    messages: Sequence[Message],
    *,
    params: Mapping[str, Any] | None = None,
    store: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The JSON body :func:`send_chat` sends for this call (its messages, model, sampling
    parameters and the fields of a stored completion): what a Batch API request line holds."""
    model, merged, extra = _chat_request(role, params, store)
    return {"messages": list(messages), "model": model, **merged, **extra}


def record_from_body(
    role: RoleConfig,
    messages: Sequence[Message],
    data: Mapping[str, Any],
    *,
    params: Mapping[str, Any] | None = None,
    store: Mapping[str, str] | None = None,
    latency_s: float = 0.0,
) -> CallRecord:
    """The :class:`CallRecord` of a chat completion read from its JSON body (a Batch API
    result's ``response.body``), as :func:`send_chat` makes one from the SDK's reply."""
    model, merged, _ = _chat_request(role, params, store)
    choices = data.get("choices") or []
    message = choices[0].get("message") if choices and isinstance(choices[0], dict) else None
    message = message if isinstance(message, dict) else {}
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
    calls = tuple(
        ToolCall(str(c.get("id", "")), c["function"]["name"], c["function"].get("arguments", ""))
        for c in message.get("tool_calls") or ()
        if isinstance(c, dict) and isinstance(c.get("function"), dict) and "name" in c["function"]
    )
    return CallRecord(
        role=role.name,
        model=str(data.get("model") or model),
        messages=tuple(dict(m) for m in messages),
        params=merged,
        reply=message.get("content") or "",
        completion_id=data.get("id"),
        prompt_tokens=int(usage.get("prompt_tokens") or 0) if usage else 0,
        completion_tokens=int(usage.get("completion_tokens") or 0) if usage else 0,
        latency_s=latency_s,
        stored=bool(store),
        tool_calls=calls,
    )


# --- answers from a recording, without the SDK's round trip ------------------------------------

_T = TypeVar("_T")
Headers = Mapping[str, Sequence[str]]  # lower-case name: its values, as a cassette keeps them


class ChatReplay(Protocol):
    """Answers a POST of a JSON body from a recording, as the client's transport would: the
    recorded answer is taken only where ``read`` takes it (a 2xx JSON body), else left for the
    request to be sent as usual, where the transport plays it or explains the miss."""

    def __call__(
        self,
        uri: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        read: Callable[[Headers, Any], _T | None],
    ) -> _T | None: ...


_REPLAYS: weakref.WeakKeyDictionary[Any, ChatReplay] = weakref.WeakKeyDictionary()


def answer_from(client: openai.OpenAI, replay: ChatReplay) -> None:
    """:func:`call_chat` on ``client`` takes a recorded answer from ``replay`` where it has one
    for the very request the SDK would send; anything else goes through the SDK as before."""
    _REPLAYS[client] = replay


def _replayed(
    replay: ChatReplay,
    client: openai.OpenAI,
    role: RoleConfig,
    messages: Sequence[Message],
    params: Mapping[str, Any] | None,
    store: Mapping[str, str] | None,
) -> CallRecord | None:
    """:func:`send_chat`'s record from a recorded answer, where the request is one whose body
    the SDK sends as given (JSON data, sampling parameters only): the body and headers it would
    send, matched as its transport matches them; the reply read from the recorded JSON as the
    SDK reads it into a ``ChatCompletion`` (a body it would not read so goes through it)."""
    model, merged, _ = _chat_request(role, params, store)
    if not merged.keys() <= SAMPLING_PARAMS:
        return None
    body = chat_body(role, messages, params=params, store=store)
    if not _plain_json(body):
        return None
    headers = {k: v for k, v in client.default_headers.items() if isinstance(v, str)}
    started = time.perf_counter()
    found = replay(f"{client.base_url}chat/completions", body, headers, _read_completion)
    if found is None:
        return None
    latency = time.perf_counter() - started
    data, processing = found
    choices, usage = data["choices"], data.get("usage")
    reply = choices[0]["message"].get("content") if choices else None
    return CallRecord(
        role=role.name,
        model=data["model"] or model,
        messages=tuple(dict(m) for m in messages),
        params=merged,
        reply=reply or "",
        completion_id=data["id"],
        prompt_tokens=usage["prompt_tokens"] if usage is not None else 0,
        completion_tokens=usage["completion_tokens"] if usage is not None else 0,
        latency_s=latency,
        stored=bool(store),
        server_s=_processing_s(processing),
    )


def _read_completion(headers: Headers, data: Any) -> tuple[dict[str, Any], str | None] | None:
    """A recorded chat completion and its ``openai-processing-ms`` header (joined as httpx
    joins a repeated header), where :func:`send_chat` would read it without an error: else
    None, and the SDK reads it (and raises what it raises)."""
    if not isinstance(data, dict) or "id" not in data or not isinstance(data.get("model"), str):
        return None
    choices, usage = data.get("choices"), data.get("usage")
    if type(choices) is not list:
        return None
    if choices:
        first = choices[0]
        message = first.get("message") if isinstance(first, dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("content"), str | None):
            return None
        if message.get("tool_calls"):  # read as the SDK reads them, by the SDK
            return None
    if usage is not None and not (
        isinstance(usage, dict)
        and isinstance(usage.get("prompt_tokens"), int)
        and isinstance(usage.get("completion_tokens"), int)
    ):
        return None
    processing = headers.get("openai-processing-ms")
    return data, ", ".join(processing) if processing else None


def _plain_json(value: object) -> bool:
    """Whether ``value`` is made of JSON's own types only (dicts with string keys, lists,
    strings, numbers, booleans, None): what the SDK's request transform leaves as it is."""
    if isinstance(value, str | int | float | bool) or value is None:
        return True
    if type(value) is list:
        return all(_plain_json(v) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _plain_json(v) for k, v in value.items())
    return False


def _processing_s(header: str | None) -> float | None:
    """``openai-processing-ms`` (OpenAI and the embedded server send it): the endpoint's own
    time on the request, without the time it waited in a queue or on the network."""
    try:
        return float(header) / 1000 if header is not None else None
    except ValueError:
        return None


class _Completions:
    def __init__(self, owner: RoleClient) -> None:
        self._owner = owner

    def create(self, *, messages: Sequence[Message], **params: Any) -> Any:
        """``client.chat.completions.create`` with the role's model and parameters filled in."""
        response, record = send_chat(
            self._owner.openai, self._owner.config, messages, params=params
        )
        self._owner.calls.append(record)
        return response


class _Chat:
    def __init__(self, owner: RoleClient) -> None:
        self.completions = _Completions(owner)


class Reply(str):
    """What ``RoleClient.complete`` returns: the reply's text (``""`` when it has none), which
    also carries the reply's ``message`` (the SDK's ``ChatCompletionMessage``) and its
    ``tool_calls`` (the SDK's, ``call.function.name`` and ``call.function.arguments``, a JSON
    string; empty when it called none)."""

    message: Any
    tool_calls: list[Any]

    def __new__(cls, text: str, message: Any = None) -> Reply:
        reply = super().__new__(cls, text)
        reply.message = message
        reply.tool_calls = list(getattr(message, "tool_calls", None) or ())
        return reply


class RoleClient:
    """What the ``teacher``/``student``/``finetuned`` fixtures return.

    ``client.chat.completions.create(messages=[...])`` is the SDK call with the role's model and
    sampling parameters filled in; ``client.complete("text")`` returns the reply text, a
    :class:`Reply` that also carries the reply's ``tool_calls``. Both take the SDK's request
    fields, ``tools=``, ``tool_choice=``, ``parallel_tool_calls=`` and ``response_format=``
    among them. ``client.openai`` is the plain SDK client. Calls made through ``chat`` and
    ``complete`` are kept in ``calls`` and reported with the test.
    """

    def __init__(self, config: RoleConfig, client: openai.OpenAI) -> None:
        self.config = config
        self.role = config.name
        self.model = config.model
        self.openai = client
        self.calls: list[CallRecord] = []
        self.chat = _Chat(self)

    def complete(self, prompt: str | Sequence[Message], **params: Any) -> Reply:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        response = self.chat.completions.create(messages=messages, **params)
        message = response.choices[0].message if response.choices else None
        return Reply(self.calls[-1].reply, message)

    def __repr__(self) -> str:
        return f"<RoleClient {self.role} model={self.model!r} endpoint={self.config.endpoint}>"


class UnknownParam(ValueError):
    """A sampling parameter the chat API does not take; ``name`` is the parameter."""

    def __init__(self, name: str, where: str) -> None:
        close = difflib.get_close_matches(name, SAMPLING_PARAMS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        self.name = name
        self.problem = (
            f"unknown sampling parameter {name!r}; {hint}allowed: "
            f"{', '.join(sorted(SAMPLING_PARAMS))}"
        )
        super().__init__(f"{where}: {self.problem}" if where else self.problem)


def check_params(params: Mapping[str, Any], where: str = "") -> None:
    """Raise :class:`UnknownParam` naming the first parameter the chat API does not take."""
    unknown = sorted(set(params) - SAMPLING_PARAMS)
    if unknown:
        raise UnknownParam(unknown[0], where)


def may_have_created(exc: Exception) -> bool:
    """A timeout, a dropped connection or a server error on a create: what it was creating (a
    fine-tuning job, a batch) may exist all the same, so look it up before creating again."""
    if type(exc).__name__ in ("APITimeoutError", "APIConnectionError"):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and status >= 500


def describe_error(error: BaseException) -> str:
    """One line for a failed SDK call: the error type, HTTP status and code, the message."""
    status = getattr(error, "status_code", None)
    body = getattr(error, "body", None)
    code = getattr(error, "code", None)
    message = body.get("message") if isinstance(body, dict) else None
    where = f" (HTTP {status}{', code ' + str(code) if code else ''})" if status else ""
    return f"{type(error).__name__}{where}: {message or error}"
