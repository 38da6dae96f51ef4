"""Who may talk to the server, and how much: checked before any route runs.

``Guard`` is plain ASGI middleware (no buffering, so streamed answers and disconnects pass
through untouched). It refuses, in OpenAI's error shape:

- a ``Host`` that is not an address the server is bound to (403): a web page that rebinds its
  own DNS name to 127.0.0.1 still sends its own name as the Host;
- an ``Origin`` of a foreign site (403): browsers send one with every cross-site POST;
- a missing or wrong ``Authorization: Bearer <key>`` when a key is set (401), compared in
  constant time, and a client address that guessed wrong too often (429, ``keys.KeyCheck``);
- a body over the route's limit (413), by its Content-Length before reading, and by counting
  while it streams in (chunked bodies have no length);
- a body that stops coming (408 and the connection closed): no piece of it for
  ``BODY_TIMEOUT_S`` seconds while the app waits for the rest.

Every answer carries headers that keep browsers from framing, sniffing or leaking it:
``X-Frame-Options: DENY``, ``X-Content-Type-Options: nosniff``, ``Referrer-Policy:
same-origin`` and a ``Content-Security-Policy`` (the dashboard's own for its pages, none but
itself; nothing at all for the API's JSON), unless the route set its own.

A client still sending a refused body must be able to read the answer: a socket closed with
unread data in it sends a reset, and the reset can discard the answer before the client reads
it (it did, now and then, for a 9 MB JSON body). So the rest of a refused body is read and
thrown away first, for at most ``DRAIN_S`` seconds (as web servers' "lingering close" does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse

from distill_server.errors import ApiError
from distill_server.hosts import is_loopback
from distill_server.http.keys import KeyCheck, Verdict, locked_message

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_LIMIT = 8 * 1024 * 1024
"""Bytes of a JSON body: far above any prompt that fits a local model's context."""
UPLOAD_LIMIT = 512 * 1024 * 1024
"""Bytes of a file upload: the Files API's own limit per file."""
_UPLOAD_PATH = "/v1/files"
DRAIN_S = 5.0
"""Seconds spent reading and discarding the rest of a refused body at most."""
_DRAIN_IDLE_S = 0.5
API_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
"""The ``Content-Security-Policy`` of the API's answers: JSON, never a page to run."""
_SAFE_HEADERS = (
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    # same-origin, not no-referrer: under no-referrer a browser sends `Origin: null` with the
    # dashboard's own form posts, which the Origin check must refuse.
    (b"referrer-policy", b"same-origin"),
)
BODY_TIMEOUT_S = 30.0
"""Seconds a request body may pause before the request is answered 408 (read per request)."""


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"The request body is larger than this endpoint's limit of {limit} bytes; send a "
            "smaller body (upload large data with the Files API, up to "
            f"{UPLOAD_LIMIT} bytes).",
            code="request_too_large",
        )


class BodyTimeout(ApiError):
    def __init__(self, seconds: float) -> None:
        super().__init__(
            408,
            f"The request body stopped arriving: nothing came for {seconds:g} s. Send the "
            "whole body without pausing.",
            code="request_timeout",
        )


def error_response(error: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The ``{"error": {...}}`` body of ``error`` with its status."""
    return JSONResponse(error.body(), error.status, headers=headers)


@dataclass(frozen=True, slots=True)
class Policy:
    """What the guard accepts: the bound address and an optional API key."""

    host: str
    port: int
    api_key: str | None

    def hosts(self) -> frozenset[str] | None:
        """Acceptable ``Host`` headers; ``None`` means any (bound to every interface)."""
        if self.host in ("0.0.0.0", "::", ""):
            return None
        host = self.host.lower()  # host names are case-insensitive (RFC 3986, 3.2.2)
        names = {host, f"[{host}]" if ":" in host else host}
        if is_loopback(host):
            names |= {"localhost", "127.0.0.1", "[::1]"}
        return frozenset(f"{name}:{self.port}" for name in names) | frozenset(names)

    def origin_allowed(self, origin: str, host: str) -> bool:
        # Same-origin pages of the server itself may call it; every other site may not.
        return origin.lower() in (f"http://{host.lower()}", f"https://{host.lower()}")


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        policy: Policy,
        keys: KeyCheck | None = None,
        page_policy: str = API_POLICY,
    ) -> None:
        self.app = app
        self.policy = policy
        self._hosts = policy.hosts()
        self._keys = keys if keys is not None else KeyCheck(policy.api_key)
        self._page_policy = page_policy.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = scope["path"].startswith("/v1")
        send = _with_headers(send, API_POLICY.encode() if api else self._page_policy)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        client = scope.get("client") or ("", 0)
        refusal = self._refusal(headers, str(client[0]), api=api)
        if refusal is not None:
            await error_response(*refusal)(scope, receive, send)
            return
        limit = UPLOAD_LIMIT if scope["path"].rstrip("/") == _UPLOAD_PATH else JSON_LIMIT
        length = headers.get("content-length", "0")
        if length.isascii() and length.isdigit() and int(length) > limit:
            await drain(receive)
            await error_response(BodyTooLarge(limit), {"connection": "close"})(scope, receive, send)
            return
        reading = _Reading(receive, limit)
        try:
            await self.app(scope, reading.receive, reading.closing(send))
        except BodyTimeout as timeout:
            # The route (or Starlette's last resort) already answered it; else answer here.
            if not reading.answered:
                await error_response(timeout, {"connection": "close"})(scope, receive, send)

    def _refusal(
        self, headers: dict[str, str], client: str, *, api: bool
    ) -> tuple[ApiError, dict[str, str]] | None:
        host = headers.get("host", "")
        if self._hosts is not None and host.lower() not in self._hosts:
            message = f"Host {host!r} is not this server's address; use {sorted(self._hosts)[0]}."
            return ApiError(403, message, code="host_not_allowed"), {}
        origin = headers.get("origin")
        if origin is not None and not self.policy.origin_allowed(origin, host):
            message = (
                f"Requests from web pages of other sites (Origin {origin!r}) are refused: a page "
                "you open must not drive this server."
            )
            return ApiError(403, message, code="origin_not_allowed"), {}
        # The dashboard's pages (outside /v1) ask for the key once and keep a session instead.
        verdict = self._verdict(headers, client) if api else Verdict.RIGHT
        if verdict is Verdict.LOCKED:
            wait = self._keys.retry_after(client)
            error = ApiError(429, locked_message(wait), type="requests", code="rate_limit_exceeded")
            return error, {"retry-after": str(wait)}
        if verdict is Verdict.WRONG:
            message = (
                "Incorrect or missing API key: send `Authorization: Bearer <key>` with the key "
                "the server was started with (--api-key, --api-key-file or DISTILL_SERVER_API_KEY)."
            )
            error = ApiError(401, message, code="invalid_api_key")
            return error, {"www-authenticate": "Bearer"}
        return None

    def _verdict(self, headers: dict[str, str], client: str) -> Verdict:
        if not self._keys.needed:
            return Verdict.RIGHT
        scheme, _, token = headers.get("authorization", "").partition(" ")
        # Header bytes were read as latin-1; the key is compared as the UTF-8 it was sent as.
        given = token.encode("latin-1").decode("utf-8", "surrogateescape")
        return self._keys.check(client, given if scheme.lower() == "bearer" else "")


def _with_headers(send: Send, content_policy: bytes) -> Send:
    """``send`` that adds the safety headers to a response that lacks them."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            present = {name.lower() for name, _ in headers}
            extra = [*_SAFE_HEADERS, (b"content-security-policy", content_policy)]
            headers += [(name, value) for name, value in extra if name not in present]
            message = {**message, "headers": headers}
        await send(message)

    return wrapped


class _Reading:
    """One request's body as the app reads it: ``BodyTooLarge`` once more than ``limit``
    bytes came in, ``BodyTimeout`` when the rest does not come (after the whole body, a
    receive waits for the disconnect, as long as it takes)."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self._limit = limit
        self._seen = 0
        self._complete = False
        self.timed_out = False
        self.answered = False

    async def receive(self) -> Message:
        if self._complete:
            return await self._receive()
        seconds = BODY_TIMEOUT_S
        try:
            message = await asyncio.wait_for(self._receive(), seconds)
        except TimeoutError:
            self.timed_out = True
            raise BodyTimeout(seconds) from None
        if message["type"] != "http.request":
            self._complete = True
            return message
        self._complete = not message.get("more_body")
        self._seen += len(message.get("body", b""))
        if self._seen > self._limit:
            if message.get("more_body"):
                await drain(self._receive)
            raise BodyTooLarge(self._limit)
        return message

    def closing(self, send: Send) -> Send:
        """``send`` that closes the connection after an answer to a body that timed out:
        the rest of it may still come, and must not be read as the next request."""

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.answered = True
                if self.timed_out:
                    headers = [*message.get("headers", []), (b"connection", b"close")]
                    message = {**message, "headers": headers}
            await send(message)

        return wrapped


async def drain(receive: Receive) -> None:
    """Read and discard the rest of the request body: until it ends, the client pauses for
    ``_DRAIN_IDLE_S`` (it may wait for an answer before it sends), or ``DRAIN_S`` passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_S
    while (left := deadline - loop.time()) > 0:
        try:
            message = await asyncio.wait_for(receive(), min(left, _DRAIN_IDLE_S))
        except TimeoutError:
            return
        if message["type"] != "http.request" or not message.get("more_body"):
            return
