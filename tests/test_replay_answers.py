"""A replayed chat call answered from its cassette without the SDK's round trip: the same
request key as the SDK's own request, the same record as the SDK's reading of the answer, and
everything else (a miss, an error answer) left to the SDK and the cassette transport as before."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from pytest_distill.cassettes import files as cassettes
from pytest_distill.cassettes import matching
from pytest_distill.cassettes import recorder as recording
from pytest_distill.roles import (
    CallRecord,
    Endpoint,
    RoleConfig,
    answer_from,
    call_chat,
    make_openai,
    send_chat,
)

BASE = "http://local.invalid/v1"
ROUTE = recording.Route("suite.eval.yaml/c1[student]", "pytest --distill-record-mode=all")
MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "Reply with the code."},
    {"role": "user", "content": "Which code goes with item 1? é"},
]
REPLY: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 0,
    "model": "small-0125",
    "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "C-1"}}
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14},
}
CALLS = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ],
}
"""A reply that calls a tool: the SDK reads its calls into the record, so it reads it."""
PARAMS: list[dict[str, Any]] = [
    {},
    {"temperature": 0, "max_tokens": 8},
    {"stop": ["\n", "END"], "seed": None, "top_p": 0.5, "logit_bias": {"50256": -100}},
    {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "code", "schema": {"type": "object"}, "strict": True},
        }
    },
]
STORE = {"distill_case": "c1", "distill_run": "run-a"}


def _sent_by_sdk(role: RoleConfig, params: dict[str, Any], store: Any) -> httpx2.Request:
    """The request the SDK itself sends for this call."""
    sent: list[httpx2.Request] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        request.read()
        sent.append(request)
        return httpx2.Response(200, json=REPLY, headers={"openai-processing-ms": "12.5"})

    client = make_openai(
        role, local_url=None, timeout=None, max_retries=0, transport=httpx2.MockTransport(answer)
    )
    with client:
        send_chat(client, role, MESSAGES, params=params, store=store)
    assert len(sent) == 1
    return sent[0]


def _record(directory: Path, request: httpx2.Request, responses: list[dict[str, Any]]) -> None:
    """A cassette in which ``request`` was answered by each of ``responses`` in turn."""
    recorded = {
        "method": request.method,
        "uri": str(request.url),
        "headers": {k: [v] for k, v in request.headers.items()},
        "body": cassettes.encode_body(request.content),
    }
    cassettes.dump(
        directory / f"{ROUTE.name}.json",
        [{"request": recorded, "response": response} for response in responses],
        {},
    )


def _ok(reply: dict[str, Any] = REPLY) -> dict[str, Any]:
    return {
        "status": {"code": 200, "message": "OK"},
        "headers": {"content-type": ["application/json"], "openai-processing-ms": ["12.5"]},
        "body": {"json": reply},
    }


@dataclasses.dataclass
class Replay:
    cassette: recording.SessionCassette
    client: openai.OpenAI
    sent: list[str]  # what reached the cassette transport (method and path)


@pytest.fixture
def replay(tmp_path: Path) -> Iterator[Any]:
    """Replaying clients over ``tmp_path``: with the cassette's answers (``fast=True``, as the
    session's clients are made) or through the SDK and the transport alone."""
    import vcr  # noqa: F401

    made: list[openai.OpenAI] = []

    def make(role: RoleConfig, fast: bool) -> Replay:
        cassette = recording.SessionCassette(tmp_path, "none", tmp_path)
        sent: list[str] = []
        play = cassette.can_play_response_for

        def counted(request: Any) -> bool:
            sent.append(f"{request.method} {request.path}")
            return play(request)

        cassette.can_play_response_for = counted  # type: ignore[method-assign]
        transport = recording.Recorder(cassette).transport()
        client = make_openai(role, local_url=None, timeout=None, max_retries=0, transport=transport)
        if fast:
            answer_from(client, cassette.answer)
        made.append(client)
        return Replay(cassette, client, sent)

    with recording.route(ROUTE):
        yield make
    for client in made:
        client.close()


def _role(**params: Any) -> RoleConfig:
    return RoleConfig("student", "small", Endpoint("url", BASE), params)


def _same(a: CallRecord, b: CallRecord) -> None:
    assert dataclasses.replace(a, latency_s=0) == dataclasses.replace(b, latency_s=0)


@pytest.mark.parametrize("store", [None, STORE])
@pytest.mark.parametrize("params", PARAMS)
def test_the_answer_is_found_by_the_key_of_the_request_the_sdk_sends(
    params: dict[str, Any], store: Any, tmp_path: Path, replay: Any
) -> None:
    role = _role(temperature=1)
    request = _sent_by_sdk(role, params, store)
    _record(tmp_path, request, [_ok(), _ok()])
    # Another run id: the stored completion's tag is volatile, as in the transport's matching.
    store = {**store, "distill_run": "run-b"} if store else None

    fast, sdk = replay(role, True), replay(role, False)
    answered = call_chat(fast.client, role, MESSAGES, params=params, store=store)
    through_sdk = call_chat(sdk.client, role, MESSAGES, params=params, store=store)
    assert fast.sent == [] and sdk.sent == ["POST /v1/chat/completions"]
    _same(answered, through_sdk)
    assert (answered.reply, answered.model, answered.completion_id) == (
        "C-1",
        "small-0125",
        REPLY["id"],
    )
    assert (answered.prompt_tokens, answered.completion_tokens, answered.server_s) == (
        12,
        2,
        0.0125,
    )
    assert answered.stored is bool(store)

    body = dict(json.loads(request.content))
    keyed = matching.shape("POST", str(request.url), request.content, dict(request.headers))
    ours = matching.json_shape("POST", str(request.url), body, dict(request.headers))
    assert ours.key == keyed.key


def test_identical_requests_take_the_recorded_answers_in_order_either_way(
    tmp_path: Path, replay: Any
) -> None:
    role = _role()
    second = {**REPLY, "id": "chatcmpl-2", "choices": [], "usage": None}
    _record(tmp_path, _sent_by_sdk(role, {}, None), [_ok(), _ok(second)])
    fast = replay(role, True)
    first = call_chat(fast.client, role, MESSAGES)
    _, then = send_chat(fast.client, role, MESSAGES)  # the SDK's way: the next answer
    assert (first.completion_id, then.completion_id) == ("chatcmpl-1", "chatcmpl-2")
    assert (then.reply, then.prompt_tokens) == ("", 0)
    with pytest.raises(recording.CassetteMiss, match="its 2 recorded response"):
        call_chat(fast.client, role, MESSAGES)
    assert fast.sent == ["POST /v1/chat/completions"] * 2


def test_a_changed_prompt_is_still_a_cassette_miss_that_says_what_changed(
    tmp_path: Path, replay: Any
) -> None:
    role = _role()
    _record(tmp_path, _sent_by_sdk(role, {}, None), [_ok()])
    changed = [MESSAGES[0], {"role": "user", "content": "Which code goes with item 2?"}]
    for fast in (True, False):
        with pytest.raises(recording.CassetteMiss) as caught:
            call_chat(replay(role, fast).client, role, changed)
        assert "differs in body.messages[1].content: recorded 'Which code goes with item 1?" in (
            str(caught.value)
        )
    with pytest.raises(recording.CassetteMiss, match=r"differs in body.temperature"):
        call_chat(replay(role, True).client, role, MESSAGES, params={"temperature": 0})


@pytest.mark.parametrize(
    "response",
    [
        {  # an error: the SDK raises it
            "status": {"code": 400, "message": "Bad Request"},
            "headers": {"content-type": ["application/json"]},
            "body": {"json": {"error": {"message": "no such model", "code": "model_not_found"}}},
        },
        _ok({**REPLY, "model": None}),  # the SDK reads it: the role's model stands in
        _ok({k: v for k, v in REPLY.items() if k != "usage"} | {"choices": "?"}),
        _ok(REPLY | {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": CALLS}]}),
    ],
    ids=["error", "no-model", "odd-choices", "tool-calls"],
)
def test_an_answer_the_record_cannot_be_read_from_is_left_to_the_sdk(
    response: dict[str, Any], tmp_path: Path, replay: Any
) -> None:
    role = _role()
    _record(tmp_path, _sent_by_sdk(role, {}, None), [response])
    outcomes = []
    for fast in (True, False):
        session = replay(role, fast)
        try:
            outcomes.append(
                dataclasses.replace(call_chat(session.client, role, MESSAGES), latency_s=0)
            )
        except Exception as error:  # compared below
            outcomes.append(type(error))
        assert session.sent == ["POST /v1/chat/completions"]
    assert outcomes[0] == outcomes[1]
    if response["status"]["code"] == 400:
        assert outcomes[0] is openai.BadRequestError
    if "tool_calls" in json.dumps(response):
        assert [c.name for c in outcomes[0].tool_calls] == ["f"]  # type: ignore[union-attr]


def test_a_call_whose_body_the_sdk_builds_otherwise_goes_through_it(
    tmp_path: Path, replay: Any
) -> None:
    role = _role()
    params = {"extra_body": {"top_k": 3}}  # merged into the body by the SDK, not here
    _record(tmp_path, _sent_by_sdk(role, params, None), [_ok()])
    session = replay(role, True)
    assert call_chat(session.client, role, MESSAGES, params=params).reply == "C-1"
    assert session.sent == ["POST /v1/chat/completions"]


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "temperature": 1.0, "n": 1, "stream": False, "messages": MESSAGES},
        {"store": True, "metadata": {"distill_case": "c1", "distill_run": "run-a"}},
        [1, 1.0, True, None, "é", {"b": 1, "a": [float("inf")]}],
        "text",
    ],
)
def test_a_loaded_cassette_keys_json_bodies_as_their_bytes_would_be_keyed(body: Any) -> None:
    from pytest_distill.cassettes.session import _shape_of

    request = {
        "method": "post",
        "uri": f"{BASE}/chat/completions?b=2&a=1",
        "headers": {"content-type": ["application/json"], "openai-beta": ["assistants=v2"]},
        "body": {"json": body},
    }
    loaded = _shape_of(request)
    encoded = cassettes.decode_body(request["body"])
    from_bytes = matching.shape("post", request["uri"], encoded, {"OpenAI-Beta": "assistants=v2"})
    assert loaded.key == from_bytes.key and loaded.value == from_bytes.value


def test_every_argument_of_call_chat_reaches_the_replayed_request() -> None:
    """A replayed answer is found by the body ``_replayed`` builds: an argument of call_chat
    that the SDK call sends but that body lacks would replay an older recording silently."""
    import inspect

    from pytest_distill import roles

    assert list(inspect.signature(roles.call_chat).parameters) == [
        "client",
        "role",
        "messages",
        "params",
        "store",
    ], "a new argument of call_chat must go into roles._replayed's body too, then here"
    assert list(inspect.signature(roles._replayed).parameters)[2:] == [
        "role",
        "messages",
        "params",
        "store",
    ]
