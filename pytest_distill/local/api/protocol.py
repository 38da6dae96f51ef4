"""uvicorn's h11 protocol with a header timeout.

uvicorn times out a keep-alive connection only after a response; a connection that never
completes its request line and headers (opened and left idle, or fed a byte at a time) would
stay open for good. Here every connection must finish a request's headers within
``HEADER_TIMEOUT_S`` of opening, or of its previous response.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

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
