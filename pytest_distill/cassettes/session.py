"""The cassette object vcrpy's httpx stubs talk to: one per session, routing each request to
its cassette file, with a dict index per file so that replay stays linear. No vcr import here:
the response decoder comes in from :mod:`pytest_distill.cassettes.recorder`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pytest_distill.cassettes import files as cassettes
from pytest_distill.cassettes import matching
from pytest_distill.cassettes.routes import ROUTE, SESSION_ROUTE, CassetteMiss, Route

T = TypeVar("T")

MAX_RETRY_AFTER = 120.0  # the SDK does not retry a longer retry-after; keep that decision
RETRIED_STATUSES = frozenset({408, 409, 429})


@dataclass
class _Cassette:
    """One cassette file: what was recorded, an index over it, and what this run used."""

    path: Path
    replays: bool
    records: bool
    recorded: list[cassettes.Interaction] = field(default_factory=list)
    shapes: list[matching.Shape] = field(default_factory=list)
    index: dict[tuple[object, ...], deque[int]] = field(default_factory=dict)
    used: list[cassettes.Interaction] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    dirty: bool = False
    shared: bool = False

    def load(self) -> None:
        self.recorded, self.meta = cassettes.load(self.path)
        for number, interaction in enumerate(self.recorded):
            found = _shape_of(interaction["request"])
            self.shapes.append(found)
            self.index.setdefault(found.key, deque()).append(number)

    def take(self, key: tuple[object, ...]) -> cassettes.Interaction | None:
        """The next unplayed answer to this request: identical requests replay in order."""
        waiting = self.index.get(key)
        if not waiting:
            return None
        interaction = self.recorded[waiting.popleft()]
        if self.records:  # rewritten with what this run adds; a replay writes nothing
            self.used.append(interaction)
        return interaction


class SessionCassette:
    """What vcrpy's httpx stubs call (``can_play_response_for``, ``play_response``,
    ``append``, ``write_protected``), routing each request to its cassette file."""

    def __init__(
        self,
        directory: Path,
        mode: str,
        rootdir: Path,
        *,
        decode: Callable[[dict[str, Any]], dict[str, Any]] = lambda response: response,
        primary: bool = True,
    ) -> None:
        self.directory, self.mode, self.rootdir = directory, mode, rootdir
        self.decode = decode  # undoes a content-encoding before the body is stored
        self.primary = primary  # not an xdist worker, or the first one
        self._lock = threading.Lock()
        self._files: dict[str, _Cassette] = {}

    write_protected = False  # a request that may not be recorded raises CassetteMiss first

    def cassette(self, name: str) -> _Cassette:
        with self._lock:
            return self._cassette(name)

    def _cassette(self, name: str) -> _Cassette:
        found = self._files.get(name)
        if found is None:
            path = self.directory / f"{name}.json"
            exists = self.mode != "all" and path.is_file()
            records = self.mode in ("new_episodes", "all") or (self.mode == "once" and not exists)
            found = _Cassette(path, replays=exists, records=records)
            if exists:
                found.load()
            self._files[name] = found
        return found

    def replays_only(self, name: str) -> bool:
        found = self.cassette(name)
        return found.replays and not found.records

    # --- the interface vcrpy's stubs use --------------------------------------------------------

    def can_play_response_for(self, request: Any) -> bool:
        to = ROUTE.get() or SESSION_ROUTE
        sent = _shape_of_vcr(request)
        with self._lock:
            target = self._cassette(to.name)
            request.distill_cassette = target
            target.shared = target.shared or to.shared
            answer = target.take(sent.key) if target.replays else None
            if answer is not None:
                request.distill_answer = answer["response"]
                return True
            if target.records:
                return False
            raise CassetteMiss(self._miss(target, to, sent))

    # --- answers without a request (roles.answer_from) -------------------------------------------

    def answer(
        self,
        uri: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        read: Callable[[Mapping[str, list[str]], Any], T | None],
    ) -> T | None:
        """The next recorded answer to a POST of JSON ``body`` to ``uri`` as ``read`` reads it,
        taken as the transport would take it, where it is a 2xx JSON answer that ``read``
        takes; None leaves the request to be sent: the transport then plays what is recorded
        (an error, a retry) or says why nothing is (CassetteMiss), as for any request."""
        to = ROUTE.get() or SESSION_ROUTE
        key = matching.json_shape("POST", uri, body, headers).key
        with self._lock:
            target = self._cassette(to.name)
            waiting = target.index.get(key) if target.replays else None
            if not waiting:
                return None
            response = target.recorded[waiting[0]]["response"]
            code, content = response["status"]["code"], response.get("body", {})
            if not (200 <= code < 300 and "json" in content):
                return None
            found = read(response.get("headers", {}), content["json"])
            if found is not None:
                target.shared = target.shared or to.shared
                target.take(key)
            return found

    def play_response(self, request: Any) -> dict[str, Any]:
        recorded: dict[str, Any] = request.distill_answer
        headers = {k: list(v) for k, v in recorded.get("headers", {}).items()}
        if _would_retry(recorded["status"]["code"], headers):
            # Replay the SDK's retries as recorded, without its wait (up to 120 s per retry).
            headers["retry-after-ms"] = ["0.001"]
        status = recorded["status"]
        return {
            "status": {"code": status["code"], "message": status.get("message", "")},
            "headers": headers,
            "body": {"string": cassettes.decode_body(recorded.get("body", {}))},
        }

    def append(self, request: Any, response: dict[str, Any]) -> None:
        response = self.decode(response)
        interaction = cassettes.scrub(
            {
                "request": {
                    "method": request.method,
                    "uri": request.uri,
                    "headers": {k: [v] for k, v in request.headers.items()},
                    "body": cassettes.encode_body(request.body_bytes),
                },
                "response": {
                    "status": response["status"],
                    "headers": response["headers"],
                    "body": cassettes.encode_body(response["body"]["string"]),
                },
            }
        )
        with self._lock:
            target: _Cassette = request.distill_cassette
            target.used.append(interaction)
            target.dirty = True

    # --- end of session ---------------------------------------------------------------------

    def save(self, name: str | None = None) -> list[Path]:
        """Write the cassettes this run recorded into (all, or one); a re-record replaces the
        old file."""
        with self._lock:
            chosen = self._files.values() if name is None else [self._files.get(name)]
            changed = [
                c for c in chosen if c is not None and c.dirty and (self.primary or not c.shared)
            ]
            for found in changed:
                cassettes.dump(found.path, found.used, found.meta)
                found.dirty = False
        return [c.path for c in changed]

    def _miss(self, target: _Cassette, to: Route, sent: matching.Shape) -> str:
        where = relative(target.path, self.rootdir)
        if not target.path.is_file():
            closest = f"no cassette {where}"
            command = to.command.replace("=all", "=once", 1)
        else:
            closest = f"{where}: " + _closest(target, sent)
            command = to.command
        return f"{sent.describe()} has no recorded response; {closest}; record it with: {command}"


def _closest(target: _Cassette, sent: matching.Shape) -> str:
    if not target.shapes:
        return "the cassette is empty"

    def score(recorded: matching.Shape) -> tuple[int, ...]:
        return tuple(int(a == b) for a, b in zip(recorded.key, sent.key, strict=True))

    best = max(target.shapes, key=score)
    differs = matching.difference(best, sent)
    if not differs:
        count = sum(1 for s in target.shapes if s.key == sent.key)
        return (
            f"its {count} recorded response(s) were all played (identical requests replay "
            "in recorded order)"
        )
    return f"closest recorded {best.describe()} differs in {differs}"


def _shape_of(request: dict[str, Any]) -> matching.Shape:
    headers = {k: v[0] for k, v in request.get("headers", {}).items() if v}
    body = request.get("body", {})
    if "json" in body and not headers.get("content-type", "").startswith("multipart/"):
        # As matching.shape would find it in the body's bytes, without writing and parsing them.
        return matching.json_shape(request["method"], request["uri"], body["json"], headers)
    return matching.shape(request["method"], request["uri"], cassettes.decode_body(body), headers)


def _shape_of_vcr(request: Any) -> matching.Shape:
    return matching.shape(request.method, request.uri, request.body_bytes, dict(request.headers))


def _would_retry(status: int, headers: dict[str, list[str]]) -> bool:
    if status not in RETRIED_STATUSES and status < 500:
        return False
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        if headers.get(name):
            try:
                return float(headers[name][0]) / scale <= MAX_RETRY_AFTER
            except ValueError:
                continue
    return True


def relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
