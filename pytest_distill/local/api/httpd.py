"""HTTP plumbing on the standard library: routing, JSON and multipart bodies, error bodies."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from pytest_distill.local.errors import ApiError, bad_request

log = logging.getLogger("pytest_distill.local")


@dataclass(frozen=True, slots=True)
class Request:
    """What a route handler sees of an HTTP request."""

    params: Mapping[str, str]
    query: Mapping[str, str]
    body: bytes
    content_type: str

    def json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.body or b"{}")
        except json.JSONDecodeError as exc:
            raise bad_request(f"The request body is not valid JSON: {exc.msg}.") from None
        if not isinstance(value, dict):
            raise bad_request("The request body must be a JSON object.")
        return value

    def form(self) -> dict[str, tuple[str | None, bytes]]:
        """Multipart fields as ``name -> (filename, bytes)``."""
        if not self.content_type.startswith("multipart/form-data"):
            raise bad_request("Expected a multipart/form-data body.")
        head = f"Content-Type: {self.content_type}\r\n\r\n".encode()
        message = BytesParser(policy=policy.HTTP).parsebytes(head + self.body)
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes):
                fields[name] = (part.get_filename(), payload)
        return fields

    def int_query(self, key: str, default: int) -> int:
        value = self.query.get(key)
        if value is None:
            return default
        if not value.isdigit() or int(value) < 1:
            raise bad_request(f"`{key}` must be a positive integer, not {value!r}.", key)
        return int(value)

    def metadata_query(self) -> dict[str, str]:
        """``metadata[key]=value`` query pairs, as the OpenAI SDK encodes a metadata filter."""
        found = (re.fullmatch(r"metadata\[(.+)\]", key) for key in self.query)
        return {m.group(1): self.query[m.group(0)] for m in found if m}


@dataclass(frozen=True, slots=True)
class Response:
    body: Any
    status: int = 200
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body).encode()


Handler = Callable[[Request], Any]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler


def route(method: str, path: str, handler: Handler) -> Route:
    """``path`` with ``{name}`` segments, under ``/v1``."""
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path)
    return Route(method, re.compile(f"/v1{regex}"), handler)


def dispatch(
    routes: Sequence[Route], method: str, target: str, body: bytes, ctype: str
) -> Response:
    """Find the route, run it, and turn ApiErrors (or crashes) into OpenAI error bodies."""
    url = urlsplit(target)
    query = {key: values[-1] for key, values in parse_qs(url.query, keep_blank_values=True).items()}
    path = url.path.rstrip("/")
    matched = [(r, r.pattern.fullmatch(path)) for r in routes]
    found = [(r, m) for r, m in matched if m]
    try:
        if not found:
            raise ApiError(404, f"Unknown path {url.path!r}.", code="unknown_url")
        hit = next(((r, m) for r, m in found if r.method == method), None)
        if hit is None:
            raise ApiError(
                405, f"{method} is not allowed on {url.path!r}.", code="method_not_allowed"
            )
        params = {key: unquote(value) for key, value in hit[1].groupdict().items()}
        result = hit[0].handler(Request(params, query, body, ctype))
        return result if isinstance(result, Response) else Response(result)
    except ApiError as error:
        return Response(error.body(), error.status)
    except Exception as exc:  # a server bug must still answer in OpenAI's shape
        log.exception("internal error on %s %s", method, target)
        crash = ApiError(500, f"Internal error: {type(exc).__name__}: {exc}", type="server_error")
        return Response(crash.body(), 500)


def handler_class(routes: Sequence[Route]) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``routes``."""

    class _Handler(BaseHTTPRequestHandler):
        # Keep-alive: the OpenAI SDK pools connections, so HTTP/1.1 saves a handshake per call.
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            ctype = self.headers.get("Content-Type", "")
            response = dispatch(routes, method, self.path, body, ctype)
            payload = response.encoded()
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(payload)))
            for key, value in response.headers.items():
                self.send_header(key, value)
            self.end_headers()
            try:
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                # The client gave up (its timeout); nothing is owed to a closed socket.
                log.debug(
                    "client closed the connection before %s %s was answered", method, self.path
                )

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s - " + format, self.address_string(), *args)

    return _Handler
