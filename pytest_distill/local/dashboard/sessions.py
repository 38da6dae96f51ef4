"""Who may use the dashboard: a session cookie, and a CSRF token on every form that changes state.

Browsers cannot send the API's ``Authorization`` header with a page load, so when the server has
an API key the dashboard asks for it once (a form, checked by the API's own ``KeyCheck``, so
guesses are slowed the same way) and keeps a session: a random id in an
``HttpOnly``, ``SameSite=Strict`` cookie, known only to this process. Every state-changing form
carries the session's CSRF token, compared in constant time; the server's guard already
refuses any request whose ``Origin`` is a foreign site.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from dataclasses import dataclass

from pytest_distill.local.api.keys import KeyCheck

COOKIE = "distill_session"
MAX_SESSIONS = 1000


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    csrf: str


class Sessions:
    def __init__(self, keys: KeyCheck) -> None:
        self.keys = keys
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    @property
    def needs_key(self) -> bool:
        return self.keys.needed

    def find(self, cookie: str | None) -> Session | None:
        with self._lock:
            return self._sessions.get(cookie or "")

    def open(self) -> Session:
        """A new session: only after the key was checked (or when none is needed)."""
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32))
        with self._lock:
            if len(self._sessions) >= MAX_SESSIONS:  # the oldest go first
                for old in list(self._sessions)[: MAX_SESSIONS // 10]:
                    del self._sessions[old]
            self._sessions[session.id] = session
        return session

    @staticmethod
    def csrf_ok(session: Session, token: str | None) -> bool:
        return hmac.compare_digest((token or "").encode(), session.csrf.encode())
