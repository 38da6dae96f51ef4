"""Record and replay the session's model traffic with vcrpy; the only module that imports vcr.

One patch of httpx2's transports (vcrpy's own stubs) is active for the whole session, talking
to a :class:`SessionCassette` instead of a vcr ``Cassette``: data-file items make their calls
on a thread pool, so a per-test ``use_cassette`` could not tell whose request is whose. Each
request goes to the cassette file of the *route* active in its thread (a context variable):
the test item's node id, or ``distill/<dataset hash>`` for the fine-tuning step. One file per
item keeps xdist workers from ever writing the same file, and a dict index keyed by the
normalised request keeps replay linear in the number of items.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shlex
import threading
from collections import deque
from collections.abc import Generator, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_distill import cassettes, matching

if TYPE_CHECKING:
    from pytest_distill.runtime import Runtime

LOCAL_PLACEHOLDER = "http://local.invalid/v1"  # the embedded server's URL while replaying
MAX_RETRY_AFTER = 120.0  # the SDK does not retry a longer retry-after; keep that decision
RETRIED_STATUSES = frozenset({408, 409, 429})
_UNSAFE = re.compile(r"[^\w.\-\[\]=,+@]")


@dataclass(frozen=True, slots=True)
class Route:
    """Which cassette a request belongs to, and the command that records it."""

    name: str
    command: str
    shared: bool = False  # every xdist worker makes these calls; only one writes them


ROUTE: ContextVar[Route | None] = ContextVar("distill_cassette_route", default=None)
SESSION_ROUTE = Route("session", "pytest --distill-record-mode=all", shared=True)


@contextlib.contextmanager
def route(to: Route) -> Iterator[None]:
    token = ROUTE.set(to)
    try:
        yield
    finally:
        ROUTE.reset(token)


def item_route(nodeid: str) -> Route:
    return Route(cassette_name(nodeid), f"pytest --distill-record-mode=all {shlex.quote(nodeid)}")


def cassette_name(nodeid: str) -> str:
    """``evals/codes.eval.yaml::i03[teacher]`` -> ``evals/codes.eval.yaml/i03[teacher]``."""
    path, *names = nodeid.split("::")
    parts = [p for p in path.split("/") if p not in ("", ".", "..")] + names
    safe = [_UNSAFE.sub("_", p) for p in parts]
    name = "/".join(safe)
    if safe != parts:  # two ids that differ only in unsafe characters must not share a file
        name += "-" + hashlib.sha256(nodeid.encode()).hexdigest()[:8]
    return name


class CassetteMiss(Exception):
    """A request with no recorded response, in a mode that may not record it."""


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
        self.used.append(interaction)
        return interaction


class SessionCassette:
    """What vcrpy's httpx stubs call (``can_play_response_for``, ``play_response``,
    ``append``, ``write_protected``), routing each request to its cassette file."""

    def __init__(self, directory: Path, mode: str, rootdir: Path, *, primary: bool = True) -> None:
        self.directory, self.mode, self.rootdir = directory, mode, rootdir
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

    def play_response(self, request: Any) -> dict[str, Any]:
        recorded: dict[str, Any] = request.distill_answer
        headers = {k: list(v) for k, v in recorded.get("headers", {}).items()}
        if _would_retry(recorded["status"]["code"], headers):
            # Replay the SDK's retries as recorded, without its wait (up to 120 s per retry).
            headers["retry-after-ms"] = ["0.001"]
        return {
            "status": recorded["status"],
            "headers": headers,
            "body": {"string": cassettes.decode_body(recorded.get("body", {}))},
        }

    def append(self, request: Any, response: dict[str, Any]) -> None:
        from vcr.filters import decode_response

        response = decode_response(response)
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

    def save(self) -> list[Path]:
        """Write every cassette this run recorded into; a re-record replaces the old file."""
        with self._lock:
            changed = [
                c for c in self._files.values() if c.dirty and (self.primary or not c.shared)
            ]
            for found in changed:
                cassettes.dump(found.path, found.used, found.meta)
                found.dirty = False
        return [c.path for c in changed]

    def _miss(self, target: _Cassette, to: Route, sent: matching.Shape) -> str:
        where = _relative(target.path, self.rootdir)
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
    body = cassettes.decode_body(request.get("body", {}))
    return matching.shape(request["method"], request["uri"], body, headers)


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


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


# --- the session --------------------------------------------------------------------------------

RECORDER_KEY = pytest.StashKey["Recorder"]()


class Recorder:
    """The patch, the session cassette and the hooks that route each test's traffic."""

    def __init__(self, cassette: SessionCassette) -> None:
        self.cassette = cassette
        self._patches = contextlib.ExitStack()

    def start(self) -> None:
        import httpx2
        from vcr.stubs.httpx_stubs import vcr_handle_async_request, vcr_handle_request

        sync = vcr_handle_request(self.cassette, httpx2.HTTPTransport.handle_request, httpx2)
        async_ = vcr_handle_async_request(
            self.cassette, httpx2.AsyncHTTPTransport.handle_async_request, httpx2
        )
        self._patches.enter_context(_patched(httpx2.HTTPTransport, "handle_request", sync))
        self._patches.enter_context(
            _patched(httpx2.AsyncHTTPTransport, "handle_async_request", async_)
        )

    def stop(self) -> None:
        self._patches.close()

    def pytest_report_header(self) -> str:
        where = _relative(self.cassette.directory, self.cassette.rootdir)
        return f"distill cassettes: {where}/ (record mode {self.cassette.mode})"

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        with route(item_route(item.nodeid)):
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(
        self, collector: pytest.Collector
    ) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
        # Collection may call the API (stored completions as cases); every worker collects.
        to = item_route(collector.nodeid or "session")
        with route(Route(to.name + "/collect", to.command, shared=True)):
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        miss = _miss_in(call.excinfo.value if call.excinfo else None)
        if miss is not None and report.failed:
            report.longrepr = str(miss)
        return report

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self) -> None:
        self.cassette.save()


@contextlib.contextmanager
def _patched(owner: type, name: str, replacement: Any) -> Iterator[None]:
    original = owner.__dict__[name]
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, original)


def _miss_in(error: BaseException | None) -> CassetteMiss | None:
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, CassetteMiss):
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def start(config: pytest.Config, runtime: Runtime) -> None:
    """Patch the session's HTTP traffic when a record mode is set (or CI defaults to none)."""
    settings = runtime.settings
    if settings.record_mode is None:
        return
    import vcr  # noqa: F401  # vcr.patch keeps the unpatched transports: import it first

    runtime.replaying = settings.record_mode == "none"
    worker = getattr(config, "workerinput", {}).get("workerid", "gw0")
    cassette = SessionCassette(
        settings.cassette_dir, settings.record_mode, settings.rootpath, primary=worker == "gw0"
    )
    recorder = Recorder(cassette)
    recorder.start()
    config.stash[RECORDER_KEY] = recorder
    config.pluginmanager.register(recorder, "distill-recording")


def stop(config: pytest.Config) -> None:
    recorder = config.stash.get(RECORDER_KEY, None)
    if recorder is not None:
        recorder.stop()


@contextlib.contextmanager
def distill_step(
    config: pytest.Config, runtime: Runtime, sha256: str, state: Path
) -> Iterator[Path]:
    """Route the fine-tuning traffic to ``distill/<dataset hash>`` and yield the state file to
    use. The job state the recording started from is kept in the cassette; a replay starts
    from it (in ``.distill/replay/``), so it makes the same requests as the recorded run."""
    recorder = config.stash.get(RECORDER_KEY, None)
    if recorder is None:
        yield state
        return
    name = f"distill/{sha256[:16]}"
    found = recorder.cassette.cassette(name)
    if recorder.cassette.replays_only(name):
        runtime.replaying = True
        state = state.parent / "replay" / "state.json"
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps(found.meta.get("state", {}), indent=2, sort_keys=True))
    else:
        try:
            found.meta["state"] = json.loads(state.read_text())
        except (OSError, ValueError):
            found.meta["state"] = {}
    with route(Route(name, "pytest --distill --distill-record-mode=all")):
        yield state
