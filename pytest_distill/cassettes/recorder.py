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
import json
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_distill.runtime import LOCAL_PLACEHOLDER
from pytest_distill.cassettes.session import SessionCassette, relative
from pytest_distill.cassettes.routes import (
    CassetteMiss,
    Route,
    cassette_name,
    item_route,
    route,
)

if TYPE_CHECKING:
    from pytest_distill.runtime import Runtime

__all__ = [
    "LOCAL_PLACEHOLDER",
    "CassetteMiss",
    "Recorder",
    "Route",
    "SessionCassette",
    "cassette_name",
    "distill_step",
    "item_route",
    "route",
    "start",
    "stop",
]

RECORDER_KEY = pytest.StashKey["Recorder"]()


class Recorder:
    """The patch, the session cassette and the hooks that route each test's traffic."""

    def __init__(self, cassette: SessionCassette) -> None:
        self.cassette = cassette
        self._patches = contextlib.ExitStack()

    def start(self) -> None:
        import httpcore2  # noqa: F401  # httpx2 imports it lazily; keep the two paired
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
        where = relative(self.cassette.directory, self.cassette.rootdir)
        return f"distill cassettes: {where}/ (record mode {self.cassette.mode})"

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        to = item_route(item.nodeid)
        try:
            with route(to):
                return (yield)
        finally:
            # Written as each item ends: an interrupted recording keeps what it finished.
            self.cassette.save(to.name)

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


# The patch is process-wide. A session started inside another one (pytester's in-process
# runs) pauses the outer patch and decides for itself, as it would in a process of its own.
_SESSIONS: list[Recorder | None] = []
STARTED_KEY = pytest.StashKey[bool]()


def start(config: pytest.Config, runtime: Runtime) -> None:
    """Patch the session's HTTP traffic when a record mode is set (or CI defaults to none)."""
    if _SESSIONS and _SESSIONS[-1] is not None:
        _SESSIONS[-1].stop()
    recorder = _recorder(config, runtime)
    _SESSIONS.append(recorder)
    config.stash[STARTED_KEY] = True
    if recorder is not None:
        recorder.start()
        config.stash[RECORDER_KEY] = recorder
        config.pluginmanager.register(recorder, "distill-recording")


def _recorder(config: pytest.Config, runtime: Runtime) -> Recorder | None:
    settings = runtime.settings
    if settings.record_mode is None:
        return None
    import vcr  # noqa: F401  # vcr.patch keeps the unpatched transports: import it first
    from vcr.filters import decode_response

    runtime.replaying = settings.record_mode == "none"
    worker = getattr(config, "workerinput", {}).get("workerid", "gw0")
    cassette = SessionCassette(
        settings.cassette_dir,
        settings.record_mode,
        settings.rootpath,
        decode=decode_response,
        primary=worker == "gw0",
    )
    return Recorder(cassette)


def stop(config: pytest.Config) -> None:
    if not config.stash.get(STARTED_KEY, False) or not _SESSIONS:
        return
    recorder = _SESSIONS.pop()
    if recorder is not None:
        recorder.stop()
    if _SESSIONS and _SESSIONS[-1] is not None:
        _SESSIONS[-1].start()


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
