"""uvicorn's h11 protocol with a header timeout, and JSON for a request it cannot parse.

uvicorn times out a keep-alive connection only after a response; a connection that never
completes its request line and headers (opened and left idle, or fed a byte at a time) would
stay open for good. Here every connection must finish a request's headers within
``HEADER_TIMEOUT_S`` of opening, or of its previous response.

A request that is not HTTP (a bad request line, a malformed header) never reaches the app:
uvicorn answers it 400 in plain text. Here that answer is OpenAI's ``{"error": {...}}`` JSON,
as every other error of this server is.
"""

from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from distill_server.errors import ApiError

HEADER_TIMEOUT_S = 30.0


class HeaderTimeoutProtocol(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def _arm(self) -> None:
        self.loop.call_later(HEADER_TIMEOUT_S, self._expire, self.cycle)

    def _expire(self, cycle: object) -> None:
        # The same cycle as when armed: no new request's headers arrived since.
        if self.cycle is cycle and not self.transport.is_closing():
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        error = ApiError(400, f"{msg} Send an HTTP/1.1 request.", code="invalid_http_request")
        body = json.dumps(error.body()).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()
