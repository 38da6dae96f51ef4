"""The server's API key: one check for the API's ``Authorization`` header and the dashboard's
login form, compared in constant time, with guessing slowed per client address.

A client address that gives a wrong key ``FAILURES`` times within ``WINDOW_S`` seconds is
locked out: for ``LOCKOUT_S`` seconds, doubling with each further lockout up to
``MAX_LOCKOUT_S``, its requests are answered 429 with ``Retry-After`` before any key is
compared (else a guesser could still tell a right key by its answer). A right key adds no delay
and its requests are never counted; a right answer does not reset the count either (a guesser
on the same address as a real client would otherwise start afresh each time the client called).
"""

from __future__ import annotations

import hmac
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

FAILURES = 20
WINDOW_S = 60.0
LOCKOUT_S = 2.0
MAX_LOCKOUT_S = 300.0
_FORGET_S = 900.0
"""A client address with no wrong key for this long starts afresh (its lockouts forgotten)."""
_MAX_CLIENTS = 10_000


class Verdict(Enum):
    RIGHT = "right"
    WRONG = "wrong"
    LOCKED = "locked"


@dataclass(slots=True)
class _Client:
    failures: list[float] = field(default_factory=list)
    locked_until: float = 0.0
    lockouts: int = 0
    last_failure: float = 0.0


class KeyCheck:
    """Checks given keys against the server's key (``None``: no key needed)."""

    def __init__(self, key: str | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._key = key.encode() if key else None
        self._clock = clock
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def needed(self) -> bool:
        return self._key is not None

    def check(self, client: str, given: str) -> Verdict:
        """``given`` (a key as the client sent it) from ``client`` (its address)."""
        if self._key is None:
            return Verdict.RIGHT
        now = self._clock()
        with self._lock:
            state = self._clients.get(client)
            if state is not None and now < state.locked_until:
                return Verdict.LOCKED
        # Surrounding whitespace is not part of a key (a header's is dropped on the way).
        if hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), self._key):
            return Verdict.RIGHT
        self._failed(client, now)
        return Verdict.WRONG

    def retry_after(self, client: str) -> int:
        """Whole seconds until ``client`` may try again (0: it may now)."""
        with self._lock:
            state = self._clients.get(client)
            left = state.locked_until - self._clock() if state is not None else 0.0
        return max(0, math.ceil(left))

    def _failed(self, client: str, now: float) -> None:
        with self._lock:
            state = self._clients.pop(client, None) or _Client()
            self._clients[client] = state  # the most recent last: evicted last
            while len(self._clients) > _MAX_CLIENTS:
                self._clients.popitem(last=False)
            if now - state.last_failure > _FORGET_S:
                state.lockouts = 0
            state.last_failure = now
            state.failures = [t for t in state.failures if now - t < WINDOW_S] + [now]
            if len(state.failures) >= FAILURES:
                state.failures.clear()
                state.locked_until = now + min(MAX_LOCKOUT_S, LOCKOUT_S * 2**state.lockouts)
                state.lockouts += 1


def locked_message(seconds: int) -> str:
    return (
        f"Too many wrong API keys from this address; try again in {seconds} s. Give the key "
        "the server was started with (--api-key, --api-key-file or DISTILL_SERVER_API_KEY)."
    )
