"""Record and replay the session's model traffic with vcrpy; the only module that imports vcr.

Nothing is patched: the SDK clients the plugin makes (role clients, the role fixtures, the
judge, stored-completion collection, the trainer) get a transport of their own whose
``handle_request`` is vcrpy's stub, talking to a :class:`SessionCassette` instead of a vcr
``Cassette``. Every other request in the process (the user's own tests, their OpenAI clients)
goes through httpx2's ordinary transport, untouched, in every record mode. Data-file items make
their calls on a thread pool, so a per-test ``use_cassette`` could not tell whose request is
whose: each request goes to the cassette file of the *route* active in its thread (a context
variable): the test item's node id, or ``distill/<dataset hash>`` for the fine-tuning step.
One file per item keeps xdist workers from ever writing the same file, and a dict index keyed
by the normalised request keeps replay linear in the number of items. A ``--distill-batch``
batch (its upload, create, retrieves and result files) has a cassette of its own,
``batches/<role>-<input key>``, with the state entry it started from, as the fine-tuning step.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_distill import paths, xdist
from pytest_distill.atomic import write_atomic
from pytest_distill.batches import BatchState
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
    import ssl

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
    """The session cassette, the transport of the plugin's clients and the hooks that route
    each test's traffic."""

    def __init__(self, cassette: SessionCassette) -> None:
        self.cassette = cassette
        self._transport: type[Any] | None = None

    def transport(self, tls: ssl.SSLContext | bool = True) -> Any:
        """A new httpx2 transport whose requests record to / replay from the cassettes;
        ``tls``: the TLS context to use (True: build one)."""
        if self._transport is None:
            self._transport = _transport_class(self.cassette)
        from openai._constants import DEFAULT_CONNECTION_LIMITS

        return self._transport(verify=tls, limits=DEFAULT_CONNECTION_LIMITS)

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


def _transport_class(cassette: SessionCassette) -> type[Any]:
    import httpx2
    from vcr.stubs.httpx_stubs import vcr_handle_request

    class CassetteTransport(httpx2.HTTPTransport):
        """httpx2's transport, with vcrpy's stub in front of it: for this session's clients only."""

    stub = vcr_handle_request(cassette, httpx2.HTTPTransport.handle_request, httpx2)
    CassetteTransport.handle_request = stub  # type: ignore[method-assign]
    return CassetteTransport


def _miss_in(error: BaseException | None) -> CassetteMiss | None:
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, CassetteMiss):
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def start(config: pytest.Config, runtime: Runtime) -> None:
    """Route the plugin's clients through cassettes when a record mode is set (or CI defaults
    to none); nothing else in the process is touched."""
    recorder = _recorder(config, runtime)
    if recorder is not None:
        runtime.transport = recorder.transport
        runtime.replay = recorder.cassette.answer
        runtime.batch_scope = batch_scope(recorder, runtime)
        config.stash[RECORDER_KEY] = recorder
        config.pluginmanager.register(recorder, "distill-recording")


def _recorder(config: pytest.Config, runtime: Runtime) -> Recorder | None:
    settings = runtime.settings
    if settings.record_mode is None:
        return None
    from vcr.filters import decode_response

    runtime.replaying = settings.record_mode == "none"
    cassette = SessionCassette(
        settings.cassette_dir,
        settings.record_mode,
        settings.rootpath,
        decode=decode_response,
        primary=xdist.is_primary(config),
    )
    return Recorder(cassette)


def stop(config: pytest.Config) -> None:
    recorder = config.stash.get(RECORDER_KEY, None)
    if recorder is not None:
        recorder.cassette.save()


@contextlib.contextmanager
def distill_step(
    config: pytest.Config, runtime: Runtime, sha256: str, state: Path, tag: str = ""
) -> Iterator[Path]:
    """Route the fine-tuning traffic to ``distill/<dataset hash>`` and yield the state file to
    use. The job state the recording started from is kept in the cassette; a replay starts
    from it (in ``.distill/replay/``), so it makes the same requests as the recorded run.
    ``tag``: the training method past SFT, whose stages (and samples) record apart."""
    recorder = config.stash.get(RECORDER_KEY, None)
    if recorder is None:
        yield state
        return
    name = f"distill/{sha256[:16]}" + (f"-{tag}" if tag else "")  # tag: a method past SFT
    found = recorder.cassette.cassette(name)
    if recorder.cassette.replays_only(name):
        runtime.replaying = True
        state = paths.replay_state(runtime.settings.rootpath)
        state.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(found.meta.get("state", {}), indent=2, sort_keys=True)
        write_atomic(state, text.encode())
    else:
        try:
            found.meta["state"] = json.loads(state.read_text())
        except (OSError, ValueError):
            found.meta["state"] = {}
    with route(Route(name, "pytest --distill --distill-record-mode=all")):
        yield state


def batch_scope(recorder: Recorder, runtime: Runtime) -> Any:
    """Route one batch's traffic to ``batches/<role>-<input key>``. Recording keeps the state
    entry the batch started from (none, or a batch to resume) in the cassette; a replay starts
    from it in ``.distill/replay/``, so it makes the recorded requests, and nothing waits."""

    @contextlib.contextmanager
    def scope(role: str, key: str, state: BatchState) -> Iterator[tuple[BatchState, bool]]:
        name = f"batches/{role}-{key[:16]}"
        found = recorder.cassette.cassette(name)
        command = f"pytest --distill-record-mode=all --distill-batch={role}"
        replaying = recorder.cassette.replays_only(name)
        if replaying:
            replay = paths.replay_state(runtime.settings.rootpath)
            replay.parent.mkdir(parents=True, exist_ok=True)
            state = BatchState(replay)
            state.replace(key, found.meta.get("batch_state"))
        else:
            found.meta["batch_state"] = state.entry(key) or None
        try:
            with route(Route(name, command)):
                yield state, replaying
        finally:
            recorder.cassette.save(name)

    return scope
