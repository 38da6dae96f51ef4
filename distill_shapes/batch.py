"""The Batch API's files: input lines (requests), output lines (results), and their limits.

An input file is JSONL, one request a line::

    {"custom_id": "case-1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}

OpenAI's rules, each reported with the 1-based line that breaks it and what to do instead:
every line is a JSON object; ``custom_id`` is a non-empty string, unique in the file;
``method`` is ``POST``; ``url`` is an endpoint the batch runs (here ``/v1/chat/completions``);
``body`` is an object naming its ``model``, the same model on every line (one model per
file); at most ``MAX_REQUESTS`` requests and ``MAX_FILE_BYTES`` bytes. What is wrong inside
a body (a bad message, a temperature out of range) is not the file's fault: that request
fails alone, as a line of the batch's error file.

An output line (of the output file, or the error file) answers one request::

    {"id": "batch_req_...", "custom_id": "case-1",
     "response": {"status_code": 200, "request_id": "req_...", "body": {...}} | null,
     "error": {"code": "...", "message": "..."} | null}

A request the endpoint answered has a ``response`` (its status code and body, an error body
for a 400); one that never ran (the batch was cancelled or expired first) has an ``error``.
Output lines come in any order: match them to requests by ``custom_id``.

Pure Python, imported by the plugin (which writes input files and reads results) and the
embedded server (which reads input files and writes results) alike.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_REQUESTS = 50_000
"""The most requests one input file may hold."""
MAX_FILE_BYTES = 200 * 1000 * 1000
"""The largest input file, in bytes (OpenAI's 200 MB, counted in the smaller unit)."""
CHAT_URL = "/v1/chat/completions"
SERVED_URLS = frozenset({CHAT_URL})
"""The endpoints whose requests a batch runs, on this project's server."""
COMPLETION_WINDOW = "24h"
"""The only completion window the API offers."""


class InvalidBatchFile(ValueError):
    """A rule broken by an input (or output) file: the 1-based line (None: the whole file),
    what is wrong, and a ``code`` as the API's ``BatchError`` has one."""

    def __init__(self, line: int | None, rule: str, code: str, param: str | None = None) -> None:
        where = "" if line is None else f"line {line}: "
        super().__init__(f"Invalid batch file: {where}{rule}")
        self.line = line
        self.rule = rule
        self.code = code
        self.param = param

    def to_error(self) -> dict[str, Any]:
        """The API's ``BatchError`` object for this fault."""
        return {"code": self.code, "message": str(self), "param": self.param, "line": self.line}


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """One input line: a request to run, named by ``custom_id``."""

    custom_id: str
    body: dict[str, Any]
    url: str = CHAT_URL
    method: str = "POST"
    line: int | None = field(default=None, compare=False)
    """The 1-based line of the file it was read from (None when built in code)."""

    @property
    def model(self) -> str | None:
        model = self.body.get("model")
        return model if isinstance(model, str) else None

    def to_json(self) -> dict[str, Any]:
        return {
            "custom_id": self.custom_id,
            "method": self.method,
            "url": self.url,
            "body": self.body,
        }

    def to_line(self) -> bytes:
        """The request as one line of an input file, newline included."""
        return _line(self.to_json())


def write_requests(requests: Iterable[BatchRequest]) -> bytes:
    """An input file of ``requests`` (JSONL), checked as ``read_requests`` checks one: a file
    this writes is one the API (and this project's server) accepts."""
    lines = [request.to_line() for request in requests]
    check_requests(lines)
    return b"".join(lines)


def check_requests(lines: Iterable[bytes | str], urls: frozenset[str] = SERVED_URLS) -> str | None:
    """Check a whole input file's lines; returns its model (None for a file of no requests)."""
    model = None
    for request in read_requests(lines, urls):
        model = model or request.model
    return model


def read_requests(
    lines: Iterable[bytes | str], urls: frozenset[str] = SERVED_URLS
) -> Iterator[BatchRequest]:
    """The requests of an input file's lines (``open(path, "rb")`` will do), checked one at a
    time: ``InvalidBatchFile`` at the first line that breaks a rule (see the module's doc).
    Blank lines are skipped. ``urls``: the endpoints the batch runs."""
    seen: set[str] = set()
    model: tuple[str, int] | None = None  # the file's model and the first line naming it
    size = count = 0
    for number, raw in enumerate(lines, 1):
        data = raw.encode() if isinstance(raw, str) else raw
        size += len(data)
        if size > MAX_FILE_BYTES:
            raise InvalidBatchFile(
                number,
                f"the file is larger than {MAX_FILE_BYTES} bytes, the most one batch may hold; "
                "split it (distill_shapes.batch.split_requests does).",
                "file_too_large",
            )
        if not data.strip():
            continue
        request = _request(number, data, urls)
        count += 1
        if count > MAX_REQUESTS:
            raise InvalidBatchFile(
                number,
                f"the file has more than {MAX_REQUESTS} requests, the most one batch may hold; "
                "split it (distill_shapes.batch.split_requests does).",
                "too_many_requests",
            )
        if request.custom_id in seen:
            raise InvalidBatchFile(
                number,
                f"custom_id {request.custom_id!r} is used by an earlier line; each request "
                "needs a custom_id of its own, which its result carries back.",
                "duplicate_custom_id",
                "custom_id",
            )
        seen.add(request.custom_id)
        assert request.model is not None  # _request checked it
        if model is None:
            model = (request.model, number)
        elif request.model != model[0]:
            raise InvalidBatchFile(
                number,
                f"body.model is {request.model!r}, but line {model[1]} uses {model[0]!r}; a "
                "batch runs one model, so put each model's requests in a file of its own.",
                "mismatched_model",
                "body.model",
            )
        yield request


def _request(number: int, data: bytes, urls: frozenset[str]) -> BatchRequest:
    try:
        record = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise InvalidBatchFile(
            number,
            f"not valid JSON ({reason}); write one JSON object per line, its strings UTF-8.",
            "invalid_json",
        ) from None
    if not isinstance(record, dict):
        raise InvalidBatchFile(
            number,
            f"the line is a JSON {type(record).__name__}, not an object with custom_id, method, "
            "url and body.",
            "invalid_request",
        )
    custom_id = record.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise InvalidBatchFile(
            number,
            f"custom_id is {custom_id!r}; each request needs a non-empty string custom_id, "
            "which its result carries back.",
            "missing_custom_id" if custom_id is None else "invalid_custom_id",
            "custom_id",
        )
    method = record.get("method")
    if method != "POST":
        raise InvalidBatchFile(
            number, f'method is {method!r}; it must be "POST".', "invalid_method", "method"
        )
    url = record.get("url")
    if url not in urls:
        served = ", ".join(repr(u) for u in sorted(urls))
        raise InvalidBatchFile(
            number,
            f"url is {url!r}, which this batch does not run; use {served} (the batch's "
            "endpoint, path only).",
            "invalid_url",
            "url",
        )
    body = record.get("body")
    if not isinstance(body, dict):
        raise InvalidBatchFile(
            number,
            f"body is {_kind(body)}; it must be a JSON object, the request's body as the "
            "endpoint takes it.",
            "invalid_body",
            "body",
        )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidBatchFile(
            number,
            f"body.model is {model!r}; each body names its model (one model per file).",
            "missing_model",
            "body.model",
        )
    return BatchRequest(custom_id, body, url, method, number)


def split_requests(
    requests: Sequence[BatchRequest],
    max_requests: int = MAX_REQUESTS,
    max_bytes: int = MAX_FILE_BYTES,
) -> list[bytes]:
    """``requests`` as input files within the API's limits: one model per file (in the order
    each model first appears), each file at most ``max_requests`` lines and ``max_bytes``
    bytes, requests in their given order within a model. A request whose line alone is over
    ``max_bytes``, or a custom_id used twice, is ``InvalidBatchFile`` (line: its 1-based
    position in ``requests``)."""
    if max_requests < 1 or max_bytes < 1:
        raise ValueError("max_requests and max_bytes must be at least 1.")
    by_model: dict[str | None, list[bytes]] = {}
    seen: set[str] = set()
    for position, request in enumerate(requests, 1):
        line = request.to_line()
        check = read_requests([line], frozenset({request.url}))
        try:
            next(check)
        except InvalidBatchFile as exc:
            raise InvalidBatchFile(position, exc.rule, exc.code, exc.param) from None
        if request.custom_id in seen:
            raise InvalidBatchFile(
                position,
                f"custom_id {request.custom_id!r} is used by an earlier request.",
                "duplicate_custom_id",
                "custom_id",
            )
        seen.add(request.custom_id)
        if len(line) > max_bytes:
            raise InvalidBatchFile(
                position,
                f"the request's line has {len(line)} bytes, more than a file may hold "
                f"({max_bytes}).",
                "file_too_large",
            )
        by_model.setdefault(request.model, []).append(line)
    files: list[bytes] = []
    for lines in by_model.values():
        current: list[bytes] = []
        size = 0
        for line in lines:
            if current and (len(current) >= max_requests or size + len(line) > max_bytes):
                files.append(b"".join(current))
                current, size = [], 0
            current.append(line)
            size += len(line)
        if current:
            files.append(b"".join(current))
    return files


@dataclass(frozen=True, slots=True)
class Response:
    """The endpoint's answer to one request: its HTTP status and JSON body."""

    status_code: int
    body: dict[str, Any]
    request_id: str = field(default_factory=lambda: new_id("req_"))

    def to_json(self) -> dict[str, Any]:
        return {"status_code": self.status_code, "request_id": self.request_id, "body": self.body}


@dataclass(frozen=True, slots=True)
class RequestError:
    """Why a request has no response: it never ran (``batch_cancelled``, ``batch_expired``)."""

    code: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True, slots=True)
class BatchResult:
    """One output line: the result of the request named ``custom_id``."""

    custom_id: str
    response: Response | None
    error: RequestError | None = None
    id: str = field(default_factory=lambda: new_id("batch_req_"))

    @classmethod
    def answered(cls, custom_id: str, status_code: int, body: dict[str, Any]) -> BatchResult:
        """The endpoint answered (a 200's completion, or a 4xx/5xx's error body)."""
        return cls(custom_id, Response(status_code, body))

    @classmethod
    def not_run(cls, custom_id: str, code: str, message: str) -> BatchResult:
        """The request never ran: ``code`` is ``batch_cancelled`` or ``batch_expired``."""
        return cls(custom_id, None, RequestError(code, message))

    @property
    def ok(self) -> bool:
        """Answered with a 2xx: the line belongs to the output file (else the error file)."""
        return self.response is not None and 200 <= self.response.status_code < 300

    @property
    def body(self) -> dict[str, Any] | None:
        """The response's body (a ``chat.completion``, or an ``{"error": ...}`` body)."""
        return None if self.response is None else self.response.body

    def message(self) -> str:
        """What went wrong, in one line (empty for a success)."""
        if self.error is not None:
            return f"{self.error.code}: {self.error.message}"
        if self.response is None or self.ok:
            return ""
        error = self.response.body.get("error")
        text = error.get("message") if isinstance(error, dict) else None
        return f"HTTP {self.response.status_code}: {text or json.dumps(self.response.body)}"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "custom_id": self.custom_id,
            "response": None if self.response is None else self.response.to_json(),
            "error": None if self.error is None else self.error.to_json(),
        }

    def to_line(self) -> bytes:
        """The result as one line of an output file, newline included."""
        return _line(self.to_json())


def write_results(results: Iterable[BatchResult]) -> bytes:
    """An output (or error) file of ``results`` (JSONL)."""
    return b"".join(result.to_line() for result in results)


def read_results(lines: Iterable[bytes | str]) -> Iterator[BatchResult]:
    """The results of an output or error file's lines; ``InvalidBatchFile`` names a line that
    is not one. Blank lines are skipped."""
    for number, raw in enumerate(lines, 1):
        data = raw.encode() if isinstance(raw, str) else raw
        if data.strip():
            yield _result(number, data)


def results_by_id(files: Iterable[bytes]) -> dict[str, BatchResult]:
    """Every result of the given output and error files, by ``custom_id`` (a custom_id seen
    twice keeps its last line)."""
    found: dict[str, BatchResult] = {}
    for data in files:
        for result in read_results(data.splitlines()):
            found[result.custom_id] = result
    return found


def _result(number: int, data: bytes) -> BatchResult:
    try:
        record = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidBatchFile(number, "not valid JSON.", "invalid_json") from None
    if not isinstance(record, dict):
        raise InvalidBatchFile(number, "not a JSON object.", "invalid_result")
    custom_id, response, error = (record.get(k) for k in ("custom_id", "response", "error"))
    if not isinstance(custom_id, str):
        raise InvalidBatchFile(number, "custom_id is missing.", "invalid_result", "custom_id")
    parsed: Response | None = None
    if response is not None:
        status, body = (
            (response.get("status_code"), response.get("body"))
            if isinstance(response, dict)
            else (None, None)
        )
        if not isinstance(status, int) or not isinstance(body, dict):
            raise InvalidBatchFile(
                number,
                "response must be an object with an integer status_code and an object body.",
                "invalid_result",
                "response",
            )
        parsed = Response(status, body, str(response.get("request_id") or ""))
    failure: RequestError | None = None
    if error is not None:
        if not isinstance(error, dict):
            raise InvalidBatchFile(
                number, "error must be an object with code and message.", "invalid_result"
            )
        failure = RequestError(str(error.get("code") or ""), str(error.get("message") or ""))
    if parsed is None and failure is None:
        raise InvalidBatchFile(
            number, "the line has neither a response nor an error.", "invalid_result"
        )
    return BatchResult(custom_id, parsed, failure, str(record.get("id") or ""))


def new_id(prefix: str) -> str:
    """A fresh id for a result line or a request (``batch_req_``, ``req_``)."""
    return f"{prefix}{secrets.token_hex(12)}"


def _line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _kind(value: Any) -> str:
    if value is None:
        return "missing"
    return f"a JSON {type(value).__name__} ({json.dumps(value)[:40]})"
