"""Eval files -> pytest items, following pytest's "non-Python tests" pattern.

Each case becomes one item per selected role (``file::case-id[role]``). The ``finetuned``
role runs on the holdout split only: its training data came from the train split.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_distill.batches import BatchItemError, BatchPending
from pytest_distill.cassettes.routes import CassetteMiss, in_item_route
from pytest_distill.evals.cases import CaseFileError, EvalCase, Suite, split_of
from pytest_distill.evals.graders import build_graders
from pytest_distill.evals.loaders import load_file
from pytest_distill.grading.references import grade_any
from pytest_distill.grading.registry import (
    Grade,
    Grader,
    Sample,
    combine,
)
from pytest_distill.grading.tools import ToolCallsCheck
from pytest_distill.options.training import openai_reward_refusal
from pytest_distill.records import Attempt, GradeRecord, ItemResult
from pytest_distill.roles import (
    CallRecord,
    Message,
    MissingApiKey,
    call_chat,
    chat_body,
    describe_error,
    record_from_body,
)
from pytest_distill.runtime import RUNTIME_KEY, DistillWarning, Runtime
from pytest_distill.text import shorten

if TYPE_CHECKING:
    from _pytest._code.code import TerminalRepr


def is_eval_file(path: Path, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(path.name, p) for p in patterns)


class DistillCaseFailure(Exception):
    """An eval item whose grades did not pass."""

    def __init__(self, grades: tuple[Grade, ...], reply: str) -> None:
        super().__init__(grades)
        self.grades, self.reply = grades, reply


@dataclass(frozen=True, slots=True)
class CollectedSuite:
    """An eval file as collected: ``--distill`` makes the fine-tuned student's items from it."""

    file: DistillFile
    suite: Suite
    graders: dict[str, tuple[Grader, ...]]


COLLECTED_KEY = pytest.StashKey[list[CollectedSuite]]()


def collected(config: pytest.Config) -> list[CollectedSuite]:
    """The eval files this process collected, in order (none on an xdist controller)."""
    return config.stash.setdefault(COLLECTED_KEY, [])


class DistillFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        runtime = self.config.stash[RUNTIME_KEY]
        suite = load_file(self.path)
        if suite.source is not None:
            suite = _with_stored_cases(runtime, suite)
        roles = runtime.settings.roles
        if not roles:
            raise CaseFileError(
                self.path,
                1,
                "no role has a model; set ini distill_teacher_model and "
                "distill_student_model (or --distill-model teacher=MODEL)",
            )
        graders = build_graders(self.config, runtime, suite)
        _check_reward_graders(runtime, suite)
        collected(self.config).append(CollectedSuite(self, suite, graders))
        # Role by role: a role's calls share a prompt shape, so an endpoint that batches
        # concurrent requests (the embedded server does) pads less.
        for role in roles:
            for case in suite.cases:
                split = split_of(f"{suite.name}::{case.id}", runtime.settings.holdout)
                if self._wanted(role, split, runtime):
                    yield DistillItem.from_parent(
                        self,
                        name=f"{case.id}[{role}]",
                        suite=suite,
                        case=case,
                        role=role,
                        split=split,
                        graders=graders[case.id],
                    )

    @staticmethod
    def _wanted(role: str, split: str, runtime: Runtime) -> bool:
        """Which items a role runs. ``finetuned`` never sees train cases. Under ``--distill``
        only the teacher runs train cases (they are the training data); the gate reads the
        holdout, and ``finetuned`` runs after training."""
        held_out = split == "holdout" or runtime.settings.holdout == 0
        if role == "finetuned":
            return held_out and not runtime.settings.distill
        # --distill-method dpo: the student's failing train answers are the pairs' rejected side.
        pairs = role == "student" and runtime.settings.training.method == "dpo"
        return held_out or role == "teacher" or pairs or not runtime.settings.distill

    def repr_failure(
        self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None
    ) -> str | TerminalRepr:
        error = excinfo.value
        if isinstance(error, CaseFileError):
            where = os.path.relpath(error.path, self.config.invocation_params.dir)
            return f"{where}:{error.line}: {error.message}"
        return super().repr_failure(excinfo)


def _check_reward_graders(runtime: Runtime, suite: Suite) -> None:
    """``--distill`` with method sft+rl on OpenAI's trainer: a grader type its reinforcement
    jobs do not take is refused here, before any model call or training spend."""
    settings = runtime.settings
    if not (settings.distill and settings.training.method == "sft+rl"):
        return
    trainer = settings.training.trainer_endpoint or runtime.role("student").endpoint
    if trainer.kind != "openai":
        return
    for case in suite.cases:
        for spec in case.graders:
            refused = openai_reward_refusal(spec)
            if refused:
                raise CaseFileError(case.source or suite.path, case.line, refused)


def _with_stored_cases(runtime: Runtime, suite: Suite) -> Suite:
    from pytest_distill.evals import stored

    try:
        source = stored.parse_source(suite.source)
        client = runtime.client(source.role)
        cases = stored.load_cases(client, source, suite.graders, suite.line)
    except ValueError as exc:
        raise CaseFileError(suite.path, suite.line, str(exc)) from None
    except Exception as exc:
        raise CaseFileError(
            suite.path, suite.line, f"listing stored completions failed: {describe_error(exc)}"
        ) from None
    if not cases:
        raise CaseFileError(
            suite.path,
            suite.line,
            f"no stored completions of role {source.role!r} match model {source.model!r} and "
            f"metadata {dict(source.metadata)!r}; store some with "
            "ini distill_store = true, or widen the filter",
        )
    return dataclasses.replace(suite, cases=tuple(cases))


class DistillItem(pytest.Item):
    def __init__(
        self,
        *,
        suite: Suite,
        case: EvalCase,
        role: str,
        split: str,
        graders: tuple[Grader, ...],
        **kwargs: Any,
    ) -> None:
        # A node id given as text is parsed as pytest parses the ids it caches, so the role in
        # brackets is the id's parameter and --lf finds the item again.
        kwargs.setdefault("nodeid", f"{kwargs['parent'].nodeid}::{kwargs['name']}")
        super().__init__(**kwargs)
        self.suite, self.case, self.role, self.split = suite, case, role, split
        self.graders = graders

    @property
    def runtime(self) -> Runtime:
        return self.config.stash[RUNTIME_KEY]

    def model_call(self) -> CallRecord:
        runtime = self.runtime
        messages, params, store = self._request()
        return call_chat(
            runtime.client(self.role),
            runtime.role(self.role),
            messages,
            params=params,
            store=store,
        )

    def _request(self) -> tuple[list[Message], dict[str, Any], dict[str, str] | None]:
        """The case's chat call for the item's role: messages, parameters, stored metadata."""
        params = {
            **self.suite.params_for(self.role),
            **self.suite.tooling_for(self.role, self.case).request(),
        }
        return list(self.suite.messages_for(self.case, self.role)), params, self._store_metadata()

    @property
    def batched(self) -> bool:
        """Whether the item's calls go through the Batch API (``--distill-batch``)."""
        return self.role in self.runtime.settings.batch_roles

    def batch_bodies(self) -> list[dict[str, Any]]:
        """The chat bodies the item sends, one per repeat, exactly as a live call sends them."""
        messages, params, store = self._request()
        body = chat_body(self.runtime.role(self.role), messages, params=params, store=store)
        return [body for _ in range(self.runtime.settings.repeats)]

    def _batch_calls(self) -> tuple[CallRecord, ...]:
        """The item's records, read from its role's batch results as from live replies."""
        messages, params, store = self._request()
        config = self.runtime.role(self.role)
        return tuple(
            dataclasses.replace(
                record_from_body(config, messages, answer.body, params=params, store=store),
                batch_id=answer.batch_id,
                custom_id=answer.custom_id,
            )
            for answer in self.runtime.batch_answers(self.role, self.nodeid)
        )

    def _store_metadata(self) -> dict[str, str] | None:
        """OpenAI's stored-completion metadata: at most 16 keys of 64, values of 512 chars."""
        if not (self.runtime.settings.training.store and self.role == "teacher"):
            return None
        tags = {
            "distill_suite": self.suite.name,
            "distill_case": self.case.id,
            "distill_role": self.role,
            "distill_run": self.runtime.run_id,
        }
        return {k[:64]: v[:512] for k, v in tags.items()}

    def prefetch(self) -> None:
        if not self.batched:  # a batch role's answers come from its batch
            self.runtime.prefetch(self.nodeid, self._routed_calls)

    def _routed_calls(self) -> tuple[CallRecord, ...]:
        """The case's calls, one per repeat, one after another: identical requests then replay
        in the order they were recorded, each repeat its own answer."""
        repeats = self.runtime.settings.repeats
        return in_item_route(self.nodeid, lambda: tuple(self.model_call() for _ in range(repeats)))

    def _grade(self, call: CallRecord) -> tuple[tuple[Grade, ...], Attempt]:
        cases = self.case.items()
        sample = Sample(output_text=call.reply, output_tools=call.tool_calls)
        grades = tuple(grade_any(g, sample, cases) for g in self.graders)
        score, passed = combine(grades)
        records = tuple(GradeRecord(g.name, g.score, g.passed, g.reason) for g in grades)
        return grades, Attempt(passed, score, call, records)

    def runtest(self) -> None:
        calls: tuple[CallRecord, ...] = ()
        try:
            warning = self.runtime.retirement_warning(self.role)
            if warning:
                self.warn(DistillWarning(warning))
            if self.batched:
                try:
                    calls = self._batch_calls()
                except BatchPending as pending:  # --distill-no-wait: collected by a rerun
                    pytest.skip(str(pending))
            else:
                calls = self.runtime.call(self.nodeid, self._routed_calls)
            graded = [self._grade(call) for call in calls]
        except Exception as exc:
            # No grade: still a result of its role, counted as errored (never a quiet pass).
            first_call = calls[0] if calls else None
            self.user_properties.extend(
                self._result(first_call, error=error_line(exc)).properties()
            )
            raise
        attempts = [attempt for _, attempt in graded]
        score = sum(a.score for a in attempts) / len(attempts)
        passed = all(a.passed for a in attempts)
        grades, first = next(((g, a) for g, a in graded if not a.passed), graded[0])
        assert first.call is not None
        result = self._result(
            first.call,
            passed=passed,
            score=score,
            grades=first.grades,
            attempts=tuple(attempts) if len(attempts) > 1 else (),
            tool_score=self._tool_score(graded),
        )
        self.user_properties.extend(result.properties())
        if not passed:
            raise DistillCaseFailure(grades, shown_reply(first.call))

    def _tool_score(self, graded: list[tuple[tuple[Grade, ...], Attempt]]) -> float | None:
        """The mean score of the case's tool_calls graders over its repeats (None: none)."""
        at = [i for i, g in enumerate(self.graders) if isinstance(g, ToolCallsCheck)]
        scores = [grades[i].score for grades, _ in graded for i in at]
        return sum(scores) / len(scores) if scores else None

    def _result(
        self,
        call: CallRecord | None,
        *,
        passed: bool = False,
        score: float = 0.0,
        grades: tuple[GradeRecord, ...] = (),
        attempts: tuple[Attempt, ...] = (),
        error: str | None = None,
        tool_score: float | None = None,
    ) -> ItemResult:
        teacher = self.role == "teacher"
        student = self.suite.tooling_for("student", self.case) if teacher else None
        return ItemResult(
            tool_score=tool_score,
            train_tools=tuple(student.request().get("tools", ())) if student else (),
            train_parallel_tool_calls=student.parallel_tool_calls if student else None,
            train_earlier_turns=self.suite.train_earlier_turns,
            nodeid=self.nodeid,
            suite=self.suite.name,
            case_id=self.case.id,
            role=self.role,
            split=self.split,
            passed=passed,
            score=score,
            error=error,
            call=call,
            grades=grades,
            case_sha256=self.case.fingerprint(),
            attempts=attempts,
            reference=self.case.reference,
            location=self.case_location,
            train_messages=(
                tuple(self.suite.messages_for(self.case, "student"))
                if self.role == "teacher"
                else None
            ),
        )

    def repr_failure(
        self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None
    ) -> str | TerminalRepr:
        error = excinfo.value
        if isinstance(error, DistillCaseFailure):
            return f"case {self.case.id} at {self.case_location}\n" + format_failure(
                error.grades, error.reply
            )
        miss = _miss_in(error)
        if miss is not None:  # one line, and no traceback built only to be replaced
            return str(miss)
        if isinstance(error, MissingApiKey | BatchItemError):
            return str(error)
        if type(error).__module__.startswith("openai"):
            return f"{self.role} model call failed: {describe_error(error)}"
        return super().repr_failure(excinfo)

    @property
    def case_location(self) -> str:
        """Where the case is written, ``cases.jsonl:17``, relative to the rootdir."""
        source = self.case.source or self.suite.path
        return f"{_relative(source, self.config.rootpath)}:{self.case.line}"

    def reportinfo(self) -> tuple[Path, int, str]:
        source = self.case.source or self.path
        return source, self.case.line - 1, f"{self.suite.name}::{self.name} ({self.case_location})"


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _miss_in(error: BaseException | None) -> CassetteMiss | None:
    for _ in range(10):
        if error is None or isinstance(error, CassetteMiss):
            return error
        error = error.__cause__ or error.__context__
    return None


def error_line(error: BaseException) -> str:
    """Why an item has no grade, in one line."""
    miss = _miss_in(error)
    if miss is not None:
        return f"no recording: {shorten(str(miss).splitlines()[0], 200)}"
    if type(error).__module__.startswith("openai"):
        return f"model call failed: {shorten(describe_error(error), 200)}"
    if isinstance(error, BatchItemError):
        return shorten(str(error), 300)
    text = str(error).strip().splitlines()
    return shorten(f"{type(error).__name__}: {text[0] if text else ''}", 200)


def shown_reply(call: CallRecord) -> str:
    """A reply as a failure shows it: its text, then its tool calls, ``name(arguments)``."""
    calls = [f"{c.name}({c.arguments})" for c in call.tool_calls]
    return "\n".join([call.reply, *calls] if call.reply else calls) if calls else call.reply


def format_failure(grades: tuple[Grade, ...], reply: str) -> str:
    lines = []
    for grade in grades:
        mark = "ok  " if grade.passed else "FAIL"
        lines.append(
            f"{mark} {grade.name}: score {grade.score:.2f}"
            + (f" - {grade.reason}" if grade.reason else "")
        )
        if not grade.passed:
            lines += [f"       {d}" for d in grade.detail]
    lines.append(f"reply: {shorten(reply, 300)!r}")
    return "\n".join(lines)
