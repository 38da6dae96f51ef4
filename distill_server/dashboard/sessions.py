"""Who may use the dashboard: a session cookie, and a CSRF token on every form that changes state.

Browsers cannot send the API's ``Authorization`` header with a page load, so when the server has
an API key the dashboard asks for it once (a form, checked by the API's own ``KeyCheck``, so
guesses are slowed the same way) and keeps a session: a random id signed with a secret known
only to this process, in an ``HttpOnly``, ``SameSite=Strict`` cookie. Every state-changing form
carries the session's CSRF token (derived from the id with the same secret), compared in
constant time; the server's guard already refuses any request whose ``Origin`` is a foreign
site.

Nothing is stored per session, so no number of new sessions can push out an existing one (a
table of sessions, with its oldest evicted when full, could be emptied by a loop of page
views). A session is made by a login, or, without a key, by a page that shows such a form;
it lasts as long as the process.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from distill_server.http.keys import KeyCheck

COOKIE = "distill_session"


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    csrf: str


class Sessions:
    def __init__(self, keys: KeyCheck) -> None:
        self.keys = keys
        self._secret = secrets.token_bytes(32)

    @property
    def needs_key(self) -> bool:
        return self.keys.needed

    def find(self, cookie: str | None) -> Session | None:
        """The session of a cookie this process signed; None for any other."""
        nonce, _, signature = (cookie or "").partition(".")
        given = signature.encode("utf-8", "surrogateescape")
        if not nonce or not hmac.compare_digest(given, self._sign("session", nonce).encode()):
            return None
        return Session(f"{nonce}.{signature}", self._sign("csrf", nonce))

    def open(self) -> Session:
        """A new session: only after the key was checked (or when none is needed)."""
        nonce = secrets.token_urlsafe(24)
        return Session(f"{nonce}.{self._sign('session', nonce)}", self._sign("csrf", nonce))

    @staticmethod
    def csrf_ok(session: Session, token: str | None) -> bool:
        return hmac.compare_digest((token or "").encode(), session.csrf.encode())

    def _sign(self, purpose: str, nonce: str) -> str:
        message = f"{purpose}:{nonce}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()
