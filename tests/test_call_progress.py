"""Progress while model calls run ahead of the items, and the end of the model's conversion."""

from __future__ import annotations

import re
import threading
from types import SimpleNamespace
from typing import Any, cast

import pytest
from conftest import SUITE
from scripted_server import ScriptedServer

from pytest_distill.runtime import Runtime

FAST_PROGRESS = """\
import pytest
from pytest_distill.runtime import RUNTIME_KEY

@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    runtime = session.config.stash[RUNTIME_KEY]
    if runtime.progress_every is not None:
        runtime.progress_every = 0.0  # a line at every item while calls are in flight
"""
LINE = re.compile(
    r"^distill: model calls (\d+)/10 items answered"
    r"(, \S+ items/s, about \d+(s| min) left|, the first still running after \d+s|)$"
)


def _progress_lines(result: pytest.RunResult) -> list[str]:
    return [line for line in result.outlines if "model calls" in line]


@pytest.mark.parametrize("verbosity", [[], ["-v"]], ids=["default", "verbose"])
def test_progress_lines_while_calls_run_ahead_stand_on_lines_of_their_own(
    project: pytest.Pytester, server: ScriptedServer, verbosity: list[str]
) -> None:
    server.delay = 0.3
    project.makeconftest(FAST_PROGRESS)
    project.makefile(".eval.yaml", capitals=SUITE)
    result = project.runpytest("--distill-concurrency=2", *verbosity)
    result.assert_outcomes(passed=6, failed=4)
    lines = _progress_lines(result)
    assert lines, result.stdout.str()
    assert all(LINE.match(line) for line in lines), lines
    answered = [int(cast(re.Match[str], LINE.match(line)).group(1)) for line in lines]
    assert answered == sorted(answered) and answered[-1] < 10
    # The results around them read as usual: dots after the file's name, or one item a line.
    if verbosity:
        items = re.compile(r"^capitals\.eval\.yaml::\S+ (PASSED|FAILED) +\[ *\d+%\]$")
        assert sum(bool(items.match(line)) for line in result.outlines) == 10
        assert "" not in result.outlines[: result.outlines.index(lines[-1]) + 2]  # no blank lines
    else:
        dots = [line for line in result.outlines if line.startswith("capitals.eval.yaml ")]
        assert dots and "".join(d.split(" ")[1] for d in dots).count(".") == 6
        assert not any("distill:" in line and "capitals" in line for line in result.outlines)
        assert "" not in result.outlines[: result.outlines.index(lines[-1]) + 2]


def test_no_progress_lines_with_qq(project: pytest.Pytester, server: ScriptedServer) -> None:
    server.delay = 0.3
    project.makeconftest(FAST_PROGRESS)
    project.makefile(".eval.yaml", capitals=SUITE)
    result = project.runpytest("--distill-concurrency=2", "-qq")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert not _progress_lines(result)


def test_a_quick_run_or_replay_prints_no_progress(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    project.runpytest("--distill-record-mode=all").assert_outcomes(passed=6, failed=4)
    replayed = project.runpytest("--distill-record-mode=none")
    replayed.assert_outcomes(passed=6, failed=4)
    assert not _progress_lines(replayed)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _runtime(clock: _Clock, lines: list[str], every: float | None = 10.0) -> Runtime:
    runtime = Runtime(cast(Any, SimpleNamespace(concurrency=2)))
    runtime.notice, runtime.clock, runtime.progress_every = lines.append, clock, every
    runtime.calls_total = 4
    return runtime


def test_progress_is_throttled_and_says_rate_and_time_left() -> None:
    clock, lines = _Clock(), cast(list[str], [])
    runtime = _runtime(clock, lines)
    gates = [threading.Event() for _ in range(4)]
    try:
        for n, gate in enumerate(gates):
            runtime.prefetch(f"item{n}", lambda gate=gate: gate.wait(10))
        clock.now += 5
        runtime.progress()
        assert lines == []  # too soon: a quick run prints nothing
        clock.now += 6
        runtime.progress()
        assert lines == [
            "distill: model calls 0/4 items answered, the first still running after 11s"
        ]
        gates[0].set()
        runtime.call("item0", lambda: None)
        clock.now += 9
        runtime.progress()
        assert len(lines) == 1  # at most one line every ten seconds
        clock.now += 1
        runtime.progress()
        assert lines[-1] == "distill: model calls 1/4 items answered, 0.048 items/s, about 63s left"
        for n in (1, 2, 3):
            gates[n].set()
            runtime.call(f"item{n}", lambda: None)
        clock.now += 60
        runtime.progress()
        assert len(lines) == 2  # nothing runs ahead any more
    finally:
        for gate in gates:
            gate.set()
        runtime.close()


def test_no_progress_without_a_throttle() -> None:
    clock, lines = _Clock(), cast(list[str], [])
    runtime = _runtime(clock, lines, every=None)
    gate = threading.Event()
    try:
        runtime.prefetch("item", lambda: gate.wait(10))
        clock.now += 600
        runtime.progress()
        assert lines == []
    finally:
        gate.set()
        runtime.close()


def test_the_conversion_end_is_shown_once_a_call_comes_back_after_it() -> None:
    clock, lines = _Clock(), cast(list[str], [])
    runtime = _runtime(clock, lines, every=None)
    pending = [["smollm2"], []]  # still converting when the first call ends, then done
    runtime._converting = (["smollm2"], clock.now, lambda: pending.pop(0))
    try:
        clock.now += 34
        runtime.call("a", lambda: None)
        runtime.progress()
        assert lines == []
        clock.now += 3
        runtime.call("b", lambda: None)
        runtime.progress()
        runtime.progress()
        assert lines == [
            "distill: the embedded server converted smollm2; its first answer came 37s after "
            "it started"
        ]
    finally:
        runtime.close()


def test_the_plugin_lines_made_at_configure_reach_the_terminal(project: pytest.Pytester) -> None:
    # The writer is made before pytest's terminal reporter exists (the conversion notice uses it).
    project.makeconftest(
        """
        from pytest_distill.runtime import RUNTIME_KEY

        def pytest_collection_finish(session):
            session.config.stash[RUNTIME_KEY].notice("distill: a notice")
        """
    )
    project.makepyfile("def test_one(): pass")
    result = project.runpytest()
    result.assert_outcomes(passed=1)
    assert "distill: a notice" in result.outlines


def test_the_rate_is_counted_from_the_conversion_end() -> None:
    clock, lines = _Clock(), cast(list[str], [])
    runtime = _runtime(clock, lines)
    runtime._converting = (["smollm2"], clock.now, lambda: [])
    gates = [threading.Event() for _ in range(3)]
    try:
        for n, gate in enumerate(gates):
            runtime.prefetch(f"item{n}", lambda gate=gate: gate.wait(10))
        clock.now += 60  # converting
        gates[0].set()
        runtime.call("item0", lambda: None)
        runtime.progress()
        assert lines == [
            "distill: the embedded server converted smollm2; its first answer came 60s after "
            "it started",
            "distill: model calls 1/4 items answered",
        ]
        clock.now += 10
        gates[1].set()
        runtime.call("item1", lambda: None)
        runtime.progress()
        assert lines[-1] == "distill: model calls 2/4 items answered, 0.1 items/s, about 20s left"
    finally:
        for gate in gates:
            gate.set()
        runtime.close()
