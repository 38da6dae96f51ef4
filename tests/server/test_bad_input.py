"""Bad input answers 4xx in OpenAI's error shape, before any work is queued (issue 13)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest

OpenApi = Any

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture
def http(server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


def assert_error(response: httpx.Response, status: int, openapi: OpenApi) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    openapi.validate_schema("ErrorResponse", body)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": -1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": "x"}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": "abc"}, "max_tokens"),
        ({"max_tokens": [1]}, "max_tokens"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 10**9}, "max_tokens"),
        ({"max_completion_tokens": 10**9}, "max_completion_tokens"),
        ({"stop": 5}, "stop"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"seed": "abc"}, "seed"),
        ({"seed": 2**70}, "seed"),
        ({"n": 0}, "n"),
        ({"n": 2}, "n"),
        ({"stream": "yes"}, "stream"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        ({"metadata": {"k": 1}}, "metadata.k"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": "hi"}, "messages"),
        ({"model": 7}, "model"),
    ],
)
def test_bad_chat_parameter_is_400_naming_it(
    http: httpx.Client, openapi: OpenApi, change: dict[str, Any], param: str
) -> None:
    error = assert_error(http.post("/chat/completions", json={**CHAT, **change}), 400, openapi)
    assert error["param"].startswith(param)
    assert error["type"] == "invalid_request_error"


def test_missing_model_is_400_missing_required(http: httpx.Client, openapi: OpenApi) -> None:
    body = {"messages": CHAT["messages"]}
    error = assert_error(http.post("/chat/completions", json=body), 400, openapi)
    assert (error["param"], error["code"]) == ("model", "missing_required")


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"model": "tiny",',
        b"[1, 2]",
    ],
    ids=["invalid-utf8", "nested-100000-deep", "truncated", "not-an-object"],
)
def test_unparsable_body_is_400(http: httpx.Client, openapi: OpenApi, raw: bytes) -> None:
    headers = {"content-type": "application/json"}
    response = http.post("/chat/completions", content=raw, headers=headers)
    assert_error(response, 400, openapi)


def test_text_plain_body_is_415(http: httpx.Client, openapi: OpenApi) -> None:
    headers = {"content-type": "text/plain"}
    response = http.post("/chat/completions", content=json.dumps(CHAT), headers=headers)
    assert assert_error(response, 415, openapi)["code"] == "unsupported_media_type"


def test_text_plain_job_creation_is_415(http: httpx.Client, openapi: OpenApi) -> None:
    body = json.dumps({"model": "tiny", "training_file": "file-x"})
    response = http.post("/fine_tuning/jobs", content=body, headers={"content-type": "text/plain"})
    assert_error(response, 415, openapi)


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"method": "supervised"}, "method"),
        ({"method": {"type": "magic"}}, "method.type"),
        ({"hyperparameters": [1, 2]}, "hyperparameters"),
        ({"hyperparameters": {"n_epochs": "many"}}, "hyperparameters.n_epochs"),
        (
            {
                "method": {
                    "type": "supervised",
                    "supervised": {"hyperparameters": {"batch_size": 0}},
                }
            },
            "method.supervised.hyperparameters.batch_size",
        ),
        ({"seed": -1}, "seed"),
        ({"suffix": "x" * 65}, "suffix"),
        ({"training_file": 5}, "training_file"),
    ],
)
def test_bad_job_parameter_is_400_naming_it(
    http: httpx.Client, openapi: OpenApi, change: dict[str, Any], param: str
) -> None:
    body = {"model": "tiny", "training_file": "file-x", **change}
    error = assert_error(http.post("/fine_tuning/jobs", json=body), 400, openapi)
    assert error["param"] == param


def test_body_over_the_limit_is_413(http: httpx.Client, openapi: OpenApi) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * (9 * 1024 * 1024)}]}
    response = http.post("/chat/completions", json=big)
    assert assert_error(response, 413, openapi)["code"] == "request_too_large"


def test_chunked_body_over_the_limit_is_413(http: httpx.Client, openapi: OpenApi) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "tiny", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * (1024 * 1024)
        yield b'"}]}'

    headers = {"content-type": "application/json"}
    response = http.post("/chat/completions", content=chunks(), headers=headers)
    assert_error(response, 413, openapi)


def test_multipart_body_that_cannot_be_parsed_is_400_naming_the_file(
    http: httpx.Client, openapi: OpenApi
) -> None:
    # A part without a name: Starlette refuses it with its own HTTPException (once a 500 here).
    body = b"--x\r\nContent-Disposition: form-data\r\n\r\nno name\r\n--x--\r\n"
    headers = {"Content-Type": "multipart/form-data; boundary=x"}
    response = http.post("/files", content=body, headers=headers)
    error = assert_error(response, 400, openapi)
    assert error["param"] == "file" and "multipart" in error["message"]


def test_upload_announcing_more_than_the_limit_is_413_before_sending_it(
    server: Any, openapi: OpenApi
) -> None:
    host, port = server.base_url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (
            f"POST /v1/files HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\n"
            f"Content-Length: {600 * 1024 * 1024}\r\n\r\n"
        )
        sock.sendall(head.encode())
        reply = b""  # the headers and the body may come in separate reads; it closes after
        while chunk := sock.recv(65536):
            reply += chunk
    reply = reply.decode()
    assert reply.startswith("HTTP/1.1 413"), reply
    assert '"request_too_large"' in reply


@pytest.mark.parametrize(
    "request_head",
    [
        "HELLO THERE\r\n\r\n",  # not a request line
        "GET /v1/models HTTP/1.1\r\nHost localhost\r\n\r\n",  # a header without a colon
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Length: -1\r\n\r\n",
    ],
    ids=["request-line", "header", "negative-length"],
)
def test_a_request_that_is_not_http_gets_a_json_400_and_the_connection_closes(
    server: Any, openapi: OpenApi, request_head: str
) -> None:
    host = server.base_url.split("//")[1].split("/")[0]
    name, port = host.split(":")
    with socket.create_connection((name, int(port)), timeout=10) as sock:
        sock.sendall(request_head.format(host=host).encode())
        reply = b""
        while chunk := sock.recv(65536):  # the server closes: the loop ends
            reply += chunk
    head, _, body = reply.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 400"), reply
    assert "content-type: application/json" in head.lower()
    error = json.loads(body)
    openapi.validate_schema("ErrorResponse", error)
    assert error["error"]["code"] == "invalid_http_request"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nowhere", 404),
        ("PUT", "/chat/completions", 405),
        ("PATCH", "/files", 405),
        ("DELETE", "/fine_tuning/jobs", 405),
        ("GET", "/files/file-missing/content", 404),
    ],
)
def test_unknown_routes_and_methods_answer_json_not_html(
    http: httpx.Client, openapi: OpenApi, method: str, path: str, status: int
) -> None:
    assert_error(http.request(method, path), status, openapi)


@pytest.mark.parametrize("limit", ["0", "-1", "abc", "100000"])
def test_bad_limit_query_is_400(http: httpx.Client, openapi: OpenApi, limit: str) -> None:
    error = assert_error(http.get("/files", params={"limit": limit}), 400, openapi)
    assert error["param"] == "limit"


def test_valid_update_then_bad_metadata_on_update_is_400(
    http: httpx.Client, openapi: OpenApi
) -> None:
    stored = http.post("/chat/completions", json={**CHAT, "store": True}).json()
    path = f"/chat/completions/{stored['id']}"
    assert http.post(path, json={"metadata": {"a": "b"}}).json()["metadata"] == {"a": "b"}
    assert_error(http.post(path, json={"metadata": {"a": 1}}), 400, openapi)
    assert_error(http.post(path, json={}), 400, openapi)
