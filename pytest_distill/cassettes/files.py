"""The cassette file: JSON, one per test item (or per distill step), scrubbed of secrets.

Bodies are kept readable: JSON as JSON, text as text, anything else as base64. Scrubbing drops
credentials and per-account headers from requests and responses (vcrpy's ``filter_headers``
only touches requests, vcrpy#569); it runs when a cassette is written and again when one is
loaded, and applying it twice gives the same result. No vcr import here.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pytest_distill.atomic import write_atomic
from pytest_distill.secrets import SECRET_REQUEST_HEADERS, SECRET_RESPONSE_HEADERS

FORMAT = "pytest-distill/cassette/1"
# Transport details that change between runs or no longer hold for the stored body.
NOISE_HEADERS = frozenset(
    {"host", "content-length", "connection", "keep-alive", "accept-encoding", "user-agent"}
    | {"transfer-encoding", "content-encoding", "date"}
)

Interaction = dict[str, Any]


def scrub_headers(headers: Mapping[str, Any], secret: frozenset[str]) -> dict[str, list[str]]:
    kept: dict[str, list[str]] = {}
    for name, values in headers.items():
        lower = name.lower()
        if lower in secret or lower in NOISE_HEADERS or lower.startswith("x-stainless-"):
            continue
        listed = values if isinstance(values, list) else [values]
        kept.setdefault(lower, []).extend(str(v) for v in listed)
    return kept


def scrub(interaction: Interaction) -> Interaction:
    request, response = interaction["request"], interaction["response"]
    return {
        "request": {
            **request,
            "headers": scrub_headers(request.get("headers", {}), SECRET_REQUEST_HEADERS),
        },
        "response": {
            **response,
            "headers": scrub_headers(response.get("headers", {}), SECRET_RESPONSE_HEADERS),
        },
    }


def encode_body(data: bytes | None) -> dict[str, Any]:
    if not data:
        return {"string": ""}
    try:
        return {"json": json.loads(data)}
    except ValueError:
        pass
    try:
        return {"string": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def decode_body(body: Mapping[str, Any]) -> bytes:
    if "json" in body:
        return json.dumps(body["json"]).encode()
    if "base64" in body:
        return base64.b64decode(body["base64"])
    return str(body.get("string", "")).encode("utf-8")


def load(path: Path) -> tuple[list[Interaction], dict[str, Any]]:
    """The interactions and metadata of a cassette file, scrubbed again."""
    data = json.loads(path.read_bytes())
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file")
    return [scrub(i) for i in data["interactions"]], dict(data.get("meta", {}))


def dump(path: Path, interactions: Iterable[Interaction], meta: Mapping[str, Any]) -> None:
    data = {
        "format": FORMAT,
        "meta": dict(meta),
        "interactions": [scrub(i) for i in interactions],
    }
    text = json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode("utf-8"))
