"""pytest hook implementations; each one delegates to the module that owns the concern."""

from __future__ import annotations

import shlex
from collections.abc import Generator, Sequence
from pathlib import Path

import pytest

from pytest_distill import options, selection, xdist
from pytest_distill.cassettes import recorder
from pytest_distill.evals import pyevals
from pytest_distill.evals.items import DistillCaseFailure, DistillFile, DistillItem, is_eval_file
from pytest_distill.records import take_from
from pytest_distill.runtime import RUNTIME_KEY, Runtime, progress_every, terminal_line
from pytest_distill.training.state import trained_model
from pytest_distill.verdict import report, summary, view
from pytest_distill.verdict.gate import Gate, check_gate
from pytest_distill.verdict.results import results_of


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_distill import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    options.addoption(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", pyevals.MARKER_HELP)
    settings = options.resolve(config, trained=trained_model(config.rootpath))
    if settings.batch_roles and xdist.starts_workers(config):
        raise pytest.UsageError(
            "--distill-batch sends a role's cases as one batch per model for the whole "
            "session; run it without -n (xdist)"
        )
    gate = check_gate(settings.gate)
    config.stash[RUNTIME_KEY] = runtime = Runtime(settings)
    if not xdist.is_worker(config):  # a worker's terminal output is not shown
        runtime.notice = terminal_line(config)
        runtime.item_notice = terminal_line(config, before_an_item=True)
    if settings.distill and not xdist.is_worker(config):
        from pytest_distill import pipeline

        pipeline.preflight(runtime)  # before the first paid call
    recorder.start(config, runtime)
    if xdist.starts_workers(config):
        runtime.hold_local_server()  # the xdist controller outlives its workers
    from pytest_distill.evals import fixtures

    config.pluginmanager.register(fixtures, "distill-fixtures")
    if not xdist.is_worker(config):
        config.pluginmanager.register(Controller(config, gate), "distill-controller")


def pytest_unconfigure(config: pytest.Config) -> None:
    runtime = config.stash.get(RUNTIME_KEY, None)
    if runtime is not None:
        runtime.close()
    recorder.stop(config)


def pytest_report_header(config: pytest.Config) -> str | None:
    return report.header(config.stash[RUNTIME_KEY].settings)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> DistillFile | None:
    if is_eval_file(file_path, parent.config.stash[RUNTIME_KEY].settings.patterns):
        return DistillFile.from_parent(parent, path=file_path)
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "distill_role" in metafunc.fixturenames:
        roles = metafunc.config.stash[RUNTIME_KEY].settings.roles
        metafunc.parametrize("distill_role", roles, ids=list(roles))


def pytest_collection_finish(session: pytest.Session) -> None:
    runtime = session.config.stash[RUNTIME_KEY]
    runtime.order = {i.nodeid: n for n, i in enumerate(session.items)}
    runtime.calls_total = sum(isinstance(i, DistillItem) and not i.batched for i in session.items)
    for item in session.items:
        if isinstance(item, DistillItem) and item.batched:
            runtime.plan_batch(item.role, item.nodeid, item.batch_bodies)
    if runtime.notice is not None:
        runtime.progress_every = progress_every(session.config)


def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Start the model calls of the items ahead while this one runs."""
    runtime = item.config.stash[RUNTIME_KEY]
    ahead: Sequence[pytest.Item | None]
    if xdist.is_worker(item.config):
        # Under xdist only the next item is known to be ours; the workers add the concurrency.
        ahead = [item, nextitem]
    else:
        ahead = runtime.ahead(item.session.items, runtime.order.get(item.nodeid, 0))
    if isinstance(item, DistillItem) and item.batched:
        runtime.run_batches(item.role)  # once: before the role's first item, with progress
    for other in ahead:
        if isinstance(other, DistillItem):
            other.prefetch()
    runtime.progress()  # between items, so never inside a line of progress dots


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session) -> Generator[None, object, object]:
    result = yield
    runtime = session.config.stash[RUNTIME_KEY]
    if runtime.settings.distill and not xdist.is_worker(session.config):
        if session.shouldfail or session.shouldstop:
            runtime.distill_error = "distill: skipped, the session stopped early (-x or maxfail)"
        elif runtime.pending_batches():
            # Never a training set from the items that happened to be answered already.
            runtime.distill_deferred = True
            if runtime.notice is not None:
                runtime.notice(
                    "distill: not training: batches are still running (--distill-no-wait); "
                    "the run that collects them trains"
                )
        else:
            from pytest_distill import pipeline

            pipeline.run(session, runtime)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    yield
    if not isinstance(item, DistillItem):
        pyevals.grade_with_marker(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    if call.when != "call":
        return rep
    graded_below = call.excinfo is not None and isinstance(
        call.excinfo.value, DistillCaseFailure | pyevals.DistillGradeError
    )
    if not isinstance(item, DistillItem):
        if graded_below:
            rep.longrepr = str(call.excinfo.value)  # type: ignore[union-attr]
        pyevals.record(item, rep, call.excinfo.value if call.excinfo is not None else None)
    if graded_below and item.config.stash[RUNTIME_KEY].settings.gate:
        # Decided now, before the gate is evaluated; a gate not evaluated fails closed later.
        # The report stays "failed" for --lf; its word, letter and section are its own.
        rep.distill_below = True  # type: ignore[attr-defined]
    return rep


def pytest_report_teststatus(report: pytest.TestReport) -> tuple[str, str, object] | None:
    if getattr(report, "distill_below", False) and report.when == "call":
        return summary.BELOW, summary.BELOW_LETTER, ("BELOW PASSING", {"yellow": True})
    return None


def pytest_assertrepr_compare(op: str, left: object, right: object) -> list[str] | None:
    from pytest_distill.grading.compare import JsonMatch, assertrepr

    if isinstance(left, JsonMatch) or isinstance(right, JsonMatch):
        return assertrepr(op, left, right)
    return None


class Controller:
    """Hooks of the process that sees every report: the only one under xdist, or the main one."""

    def __init__(self, config: pytest.Config, gate: Gate | None = None) -> None:
        self.config = config
        self.runtime = config.stash[RUNTIME_KEY]
        self.gate = gate  # parsed once, at start-up
        self.other_failures = 0
        self.collection_errors = 0
        self.outcome: report.Outcome | None = None
        self.verdict: view.Verdict | None = None
        self.stopped_early = False
        self.suites: set[str] = set()  # every eval suite collected, before any deselection

    def pytest_itemcollected(self, item: pytest.Item) -> None:
        suite = selection.suite_of(item)
        if suite is not None:
            self.suites.add(suite)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Before the first model call: the gate's names exist, a --distill selection trains."""
        selection.check_gate_names(self.gate, self.suites)
        if self.runtime.settings.distill:
            selection.check_training_selection(self.runtime, self.config, session.items)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # tryfirst: junitxml's hook comes after, and sees only the scalar properties.
        result = take_from(report.user_properties, read=report.when == "call" or report.failed)
        if report.when == "call" and result is not None:
            results_of(self.config).add(result)
        if report.failed and not (result is not None and result.graded_failure):
            self.other_failures += 1

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.other_failures += 1
            self.collection_errors += 1

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.stopped_early = bool(session.shouldfail or session.shouldstop)
        run = self._run()
        self.outcome = outcome = report.finish(run)
        session.exitstatus = code = report.exit_status(
            outcome,
            session.exitstatus,
            other_failures=self.other_failures,
            distill_failed=self.runtime.distill_error is not None,
            deferred=self.runtime.distill_deferred or bool(run.deferred),
        )
        self.verdict = report.verdict(run, outcome, int(code), self.other_failures)
        report.write_report(run, outcome, int(code))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_terminal_summary(
        self, terminalreporter: pytest.TerminalReporter
    ) -> Generator[None, None, None]:
        # Outermost: after pytest's short test summary, so the verdict is the last thing shown.
        yield
        summary.below_passing(terminalreporter)
        if self.outcome is not None and self.verdict is not None:
            summary.summary(terminalreporter, self._run(), self.outcome, self.verdict)

    def _run(self) -> report.Run:
        runtime = self.runtime
        return report.Run(
            runtime.settings,
            results_of(self.config),
            runtime.distill_error,
            runtime.training,
            self.gate,
            # pytest stops after collection errors unless told to go on: then no item ran
            collection_errors=(
                0 if self.config.option.continue_on_collection_errors else self.collection_errors
            ),
            stopped_early=bool(self.stopped_early),
            deferred=self._deferred(),
        )

    def _deferred(self) -> str | None:
        """The batches ``--distill-no-wait`` left running, and the command that collects them."""
        pending = self.runtime.pending_batches()
        if not pending:
            return None
        listed = ", ".join(f"{f.batch_id} of role {role} ({f.status})" for role, f in pending)
        command = shlex.join(["pytest", *self.config.invocation_params.args])
        word = "batch" if len(pending) == 1 else "batches"
        return (
            f"{word} {listed} still running (--distill-no-wait): their items were skipped, "
            "the gate is not evaluated and --distill does not train on a partial set; run the "
            f"same command again to collect them: {command}"
        )
