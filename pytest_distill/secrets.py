"""Which headers are credentials: cassettes drop them, and reports drop keys named like them."""

from __future__ import annotations

SECRET_REQUEST_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "api-key", "openai-organization", "openai-project"}
    | {"cookie"}
)
SECRET_RESPONSE_HEADERS = frozenset({"set-cookie", "openai-organization", "openai-project"})
