"""How a request is found again in a cassette: a normalised key, and what differs on a miss.

The key is the method, the path, the sorted query and the body; the host is left out (the
embedded server listens on a random port) and so are headers, but for ``OpenAI-Beta``, which
selects an API version. JSON bodies are compared after parsing, so key order and whitespace do
not matter, while ``1``, ``1.0`` and ``true`` stay different values. Multipart uploads are
compared on their fields and file contents, not on the random boundary; a Batch API input file
(JSONL, one request a line) is compared without its bodies' volatile fields. No vcr import here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pytest_distill.text import shorten

MATCHED_HEADERS = ("openai-beta",)
# Body fields that differ on every run by design: the run id tagged onto stored completions.
VOLATILE_FIELDS = (("metadata", "distill_run"),)

_DISPOSITION = re.compile(rb'(\w+)="([^"]*)"')


@dataclass(frozen=True, slots=True)
class Shape:
    """A request reduced to what matching looks at."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    body: str  # canonical text: the key part
    headers: tuple[tuple[str, str], ...]
    value: Any = None  # the parsed body, for explaining a difference

    @property
    def key(self) -> tuple[object, ...]:
        return (self.method, self.path, self.query, self.body, self.headers)

    def describe(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in self.query)
        return f"{self.method} {self.path}" + (f"?{query}" if query else "")


def shape(method: str, uri: str, body: bytes | None, headers: Mapping[str, str]) -> Shape:
    lower = {k.lower(): v for k, v in headers.items()}
    parts = urlsplit(uri)
    canonical, value = canonical_body(body or b"", lower.get("content-type", ""))
    return Shape(
        method=method.upper(),
        path=parts.path,
        query=tuple(sorted(parse_qsl(parts.query, keep_blank_values=True))),
        body=canonical,
        headers=tuple((h, lower[h]) for h in MATCHED_HEADERS if h in lower),
        value=value,
    )


def json_shape(method: str, uri: str, value: Any, headers: Mapping[str, str]) -> Shape:
    """What :func:`shape` gives for a request whose body is ``value`` sent as JSON (not as a
    multipart form), without encoding and parsing it: ``value`` must be JSON's own types, as
    parsing gives them."""
    lower = {k.lower(): v for k, v in headers.items()}
    parts = urlsplit(uri)
    body = _without_volatile(dict(value) if isinstance(value, dict) else value)
    return Shape(
        method=method.upper(),
        path=parts.path,
        query=tuple(sorted(parse_qsl(parts.query, keep_blank_values=True))),
        body="json:" + json.dumps(body, sort_keys=True, separators=(",", ":")),
        headers=tuple((h, lower[h]) for h in MATCHED_HEADERS if h in lower),
        value=body,
    )


def canonical_body(body: bytes, content_type: str) -> tuple[str, Any]:
    if not body:
        return "", None
    if content_type.startswith("multipart/form-data"):
        fields = multipart_fields(body, content_type)
        return "multipart:" + json.dumps(fields, sort_keys=True), fields
    try:
        value = _without_volatile(json.loads(body))
    except ValueError:
        return "sha256:" + hashlib.sha256(body).hexdigest(), None
    # json.dumps keeps 1, 1.0 and true apart: int, float and bool print differently.
    return "json:" + json.dumps(value, sort_keys=True, separators=(",", ":")), value


def multipart_fields(body: bytes, content_type: str) -> dict[str, Any]:
    """``{name: {"filename": ..., "sha256": ...}}`` for each part, ignoring the boundary."""
    boundary = content_type.partition("boundary=")[2].strip().strip('"').encode()
    fields: dict[str, Any] = {}
    for part in body.split(b"--" + boundary)[1:]:
        head, _, content = part.partition(b"\r\n\r\n")
        if not _:
            continue  # the closing "--"
        names = {k.decode(): v.decode() for k, v in _DISPOSITION.findall(head)}
        content = content.removesuffix(b"\r\n")
        entry: Any = {"sha256": _file_digest(content)}
        if "filename" in names:
            entry["filename"] = names["filename"]
        else:
            entry = content.decode("utf-8", "replace")
        fields[names.get("name", "")] = entry
    return fields


def _file_digest(content: bytes) -> str:
    """An uploaded file's SHA-256; for a batch input file whose request bodies carry a volatile
    field (a stored completion's run id), the digest of the lines without it."""
    if b'"distill_run"' not in content:
        return hashlib.sha256(content).hexdigest()
    lines = []
    try:
        for line in content.splitlines():
            record = json.loads(line) if line.strip() else None
            if isinstance(record, dict) and isinstance(record.get("body"), dict):
                record["body"] = _without_volatile(record["body"])
            lines.append(json.dumps(record, sort_keys=True, separators=(",", ":")))
    except ValueError:
        return hashlib.sha256(content).hexdigest()
    return "lines:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _without_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        for outer, inner in VOLATILE_FIELDS:
            nested = value.get(outer)
            if isinstance(nested, dict) and inner in nested:
                value[outer] = {k: v for k, v in nested.items() if k != inner}
    return value


def difference(recorded: Shape, sent: Shape) -> str:
    """The first way ``sent`` differs from ``recorded``, in words ("" when they match)."""
    if recorded.method != sent.method:
        return "its method"
    if recorded.path != sent.path:
        return "its path"
    if recorded.query != sent.query:
        return value_difference(dict(recorded.query), dict(sent.query), "query") or "query order"
    if recorded.headers != sent.headers:
        return f"headers: recorded {dict(recorded.headers)}, sent {dict(sent.headers)}"
    if recorded.body != sent.body:
        found = value_difference(recorded.value, sent.value, "body")
        return found or f"body: recorded {shorten(repr(recorded.body), 60)}, sent {shorten(repr(sent.body), 60)}"
    return ""


def value_difference(recorded: Any, sent: Any, where: str) -> str | None:
    if type(recorded) is not type(sent):
        return f"{where}: recorded {_typed(recorded)}, sent {_typed(sent)}"
    if isinstance(recorded, dict):
        for key in sorted(set(recorded) | set(sent)):
            if key not in sent:
                return f"{where}.{key}: recorded, not sent"
            if key not in recorded:
                return f"{where}.{key}: sent, not recorded"
            found = value_difference(recorded[key], sent[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(recorded, list):
        for index, (a, b) in enumerate(zip(recorded, sent, strict=False)):
            found = value_difference(a, b, f"{where}[{index}]")
            if found:
                return found
        if len(recorded) != len(sent):
            return f"{where}: {len(recorded)} items recorded, {len(sent)} sent"
        return None
    if recorded == sent:
        return None
    return f"{where}: recorded {_typed(recorded)}, sent {_typed(sent)}"


def _typed(value: Any) -> str:
    return f"{shorten(repr(value), 60)} ({type(value).__name__})"

