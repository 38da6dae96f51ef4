"""Keep secrets out of what the report shows: the JSON report, the HTML page, the job summary.

The rules are the cassettes' (``cassettes/files.py``): a credential header never leaves the
process. A report holds no headers, but a header-named key anywhere in its data is dropped
all the same, and text that looks like a credential (an ``Authorization`` value, an OpenAI-style
key, a password in a URL, a key in a query string, or the value of a role's API-key
environment variable) is replaced by ``[redacted]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pytest_distill.cassettes.files import SECRET_REQUEST_HEADERS, SECRET_RESPONSE_HEADERS

REDACTED = "[redacted]"
SECRET_KEYS = SECRET_REQUEST_HEADERS | SECRET_RESPONSE_HEADERS | {"api_key", "x-api-key"}
_PATTERNS = (
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"),
    re.compile(r"(?i)(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"),
    re.compile(r"(?i)(?<=[?&])(api[_-]?key|key|access_token|token)=[^&#\s]+"),
)
MIN_SECRET_LENGTH = 8  # shorter "secrets" would redact ordinary words


def scrub(data: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of ``data`` (JSON values) with secret keys dropped and secret text redacted."""
    known = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
    return _walk(data, known)


def _walk(value: Any, known: list[str]) -> Any:
    if isinstance(value, str):
        return scrub_text(value, known)
    if isinstance(value, dict):
        return {
            k: _walk(v, known)
            for k, v in value.items()
            if not (isinstance(k, str) and k.lower() in SECRET_KEYS)
        }
    if isinstance(value, (list, tuple)):
        return [_walk(v, known) for v in value]
    return value


def scrub_text(text: str, known: Iterable[str] = ()) -> str:
    for secret in known:
        text = text.replace(secret, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(_replacement, text)
    return text


def _replacement(match: re.Match[str]) -> str:
    if match.lastindex:  # keep the scheme word or the parameter name, redact the value
        return f"{match.group(1)}{'=' if '=' in match.group(0) else ' '}{REDACTED}"
    return REDACTED
