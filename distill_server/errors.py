"""OpenAI-style API errors: one exception type that knows its HTTP status and error body."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answered as ``{"error": {...}}`` with the status OpenAI uses for it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        """The JSON body of the ``ErrorResponse`` schema."""
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return {"error": error}


def not_found(kind: str, object_id: str, param: str | None = None) -> ApiError:
    """A 404 for an id that names nothing, in the words OpenAI uses."""
    message = f"No {kind} found with id {object_id!r}."
    return ApiError(404, message, param=param, code=f"{kind.replace(' ', '_')}_not_found")


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """A 400 for a request whose body or query breaks the contract."""
    return ApiError(400, message, param=param, code=code)


MAX_CURSOR = 2**63 - 1
"""The largest integer SQLite stores: a bound for every number that reaches a query."""
_MAX_DIGITS = 19


def whole_number(value: str, name: str, low: int, high: int) -> int:
    """``value`` (a query parameter or form field called ``name``) as an integer from ``low``
    to ``high``, or a 400 naming it. ASCII digits only: ``str.isdigit`` accepts ``"²"`` and
    other Unicode digits that ``int`` then refuses, and ``int`` alone accepts ``" 1_0"``."""
    digits = value.isascii() and value.isdigit() and len(value) <= _MAX_DIGITS
    if not digits or not low <= int(value) <= high:
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise bad_request(
            f"`{name}` must be a whole number from {low} to {high}, not {shown!r}.", name
        )
    return int(value)
