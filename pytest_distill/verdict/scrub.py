"""Keep secrets out of what the report shows: the JSON report, the HTML page, the job summary.

The rules are the cassettes' (``pytest_distill/secrets.py``): a credential header never leaves the
process. A report holds no headers, but a header-named key anywhere in its data is dropped
all the same, and text that looks like a credential (an ``Authorization`` value, an OpenAI-style
key, a password in a URL, a key in a query string, or the value of a role's API-key
environment variable) is replaced by ``[redacted]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pytest_distill.secrets import SECRET_REQUEST_HEADERS, SECRET_RESPONSE_HEADERS

REDACTED = "[redacted]"
SECRET_KEYS = SECRET_REQUEST_HEADERS | SECRET_RESPONSE_HEADERS | {"api_key", "x-api-key"}
_SECRET = re.compile(
    r"(?i)\b(?P<scheme>bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"
    r"|\bsk-[A-Za-z0-9_-]{16,}"
    r"|(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"
    r"|(?<=[?&])(?P<param>api[_-]?key|key|access_token|token)=[^&#\s]+"
)
# Substrings every match contains: most texts hold none, and skip the regular expression.
_HINTS = ("bearer", "basic", "sk-", "://", "key=", "token=")
MIN_SECRET_LENGTH = 8  # shorter "secrets" would redact ordinary words


def scrub(data: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of ``data`` (JSON values) with secret keys dropped and secret text redacted."""
    known = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
    return _Scrubber(known).walk(data)


class _Scrubber:
    def __init__(self, known: list[str]) -> None:
        self.known = known
        # Reports repeat their prompts and keys on every case: each is looked at once.
        self.texts: dict[str, str] = {}
        self.keys: dict[str, bool] = {}

    def walk(self, value: Any) -> Any:
        if isinstance(value, str):
            found = self.texts.get(value)
            if found is None:
                found = self.texts[value] = scrub_text(value, self.known)
            return found
        if isinstance(value, dict):
            return {k: self.walk(v) for k, v in value.items() if self.keep(k)}
        if isinstance(value, (list, tuple)):
            return [self.walk(v) for v in value]
        return value

    def keep(self, key: Any) -> bool:
        if not isinstance(key, str):
            return True
        kept = self.keys.get(key)
        if kept is None:
            kept = self.keys[key] = key.lower() not in SECRET_KEYS
        return kept


def scrub_text(text: str, known: Iterable[str] = ()) -> str:
    for secret in known:
        text = text.replace(secret, REDACTED)
    lower = text.lower()
    if any(hint in lower for hint in _HINTS):
        text = _SECRET.sub(_replacement, text)
    return text


def _replacement(match: re.Match[str]) -> str:
    if match.group("scheme"):
        return f"{match.group('scheme')} {REDACTED}"
    if match.group("param"):
        return f"{match.group('param')}={REDACTED}"
    return REDACTED
