"""Per-item records, carried on test reports so that aggregation is the same under xdist.

Each eval item appends its :class:`ItemResult` as JSON to ``user_properties``; the
controller (the only process under xdist that sees every report) reads it back in
``pytest_runtest_logreport``. Scores, role and split stay as JUnit properties; the bulky
record (messages and reply) is taken off the report once read.

The items (``evals/``) write records, the training set (``training/``) and the verdict
(``verdict/``) read them: this module sits below all three.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from pytest_distill.roles import CallRecord

RECORD_PROPERTY = "distill_record"


@dataclass(frozen=True, slots=True)
class GradeRecord:
    name: str
    score: float
    passed: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One of a case's repeats (``--distill-repeats``): its own call and grades."""

    passed: bool
    score: float
    call: CallRecord | None = None
    grades: tuple[GradeRecord, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(replace(self, call=None))  # the call's messages are not copied twice
        data["call"] = self.call.to_json() if self.call else None
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Attempt:
        call = CallRecord.from_json(data["call"]) if data.get("call") else None
        return cls(
            data["passed"], data["score"], call, tuple(GradeRecord(**g) for g in data["grades"])
        )


@dataclass(frozen=True, slots=True)
class ItemResult:
    nodeid: str
    suite: str
    case_id: str
    role: str
    split: str
    passed: bool
    score: float
    grades: tuple[GradeRecord, ...] = ()
    call: CallRecord | None = None
    calls: int = 1
    location: str | None = None  # where the case is written, ``cases.jsonl:17``
    train_messages: tuple[dict[str, Any], ...] | None = None  # the student's prompt, if known
    reference: Any = None  # the case's reference answer, if it has one
    case_sha256: str = ""  # the case's content (EvalCase.fingerprint), "" when unknown
    # With --distill-repeats N > 1: every repeat; ``score`` is their mean, ``passed`` all of
    # them passing, ``call`` and ``grades`` the first one's.
    attempts: tuple[Attempt, ...] = ()
    # Training: the tools the student is offered (the API's shape) and its
    # parallel_tool_calls, and whether the assistant turns before the answer are trained too.
    train_tools: tuple[dict[str, Any], ...] = ()
    train_parallel_tool_calls: bool | None = None
    train_earlier_turns: bool = False
    # The mean score of the case's tool_calls graders (None: it has none), for the
    # tool-call accuracy of the report's tables.
    tool_score: float | None = None

    @property
    def outcomes(self) -> tuple[bool, ...]:
        return tuple(a.passed for a in self.attempts) or (self.passed,)

    @property
    def all_calls(self) -> tuple[CallRecord, ...]:
        calls = tuple(a.call for a in self.attempts if a.call is not None)
        return calls or ((self.call,) if self.call is not None else ())

    error: str | None = None  # no grade: the model call or a grader could not run (one line)

    @property
    def graded_failure(self) -> bool:
        """Failed because a grader scored it below passing: a measurement, not a bug."""
        return self.error is None and not self.passed and any(not g.passed for g in self.grades)

    def properties(self) -> list[tuple[str, object]]:
        """What goes on the report: JUnit-friendly scalars, then the whole record."""
        return [
            ("distill_role", self.role),
            ("distill_split", self.split),
            ("distill_score", f"{self.score:.4f}"),
            ("distill_passed", "true" if self.passed else "false"),
            (RECORD_PROPERTY, json.dumps(self.to_json(), ensure_ascii=False)),
        ]

    def to_json(self) -> dict[str, Any]:
        # Field by field, as asdict gives them but for copies: asdict would deep-copy every
        # message (the student's prompt, the call's) only for json.dumps to read it once.
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["grades"] = tuple(asdict(g) for g in self.grades)
        data["call"] = self.call.to_json() if self.call else None
        data["attempts"] = [a.to_json() for a in self.attempts]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ItemResult:
        call = CallRecord.from_json(data["call"]) if data.get("call") else None
        grades = tuple(GradeRecord(**g) for g in data.get("grades", ()))
        train = data.get("train_messages")
        return cls(
            **{
                **data,
                "call": call,
                "grades": grades,
                "train_messages": tuple(train) if train is not None else None,
                "train_tools": tuple(data.get("train_tools", ())),
                "attempts": tuple(Attempt.from_json(a) for a in data.get("attempts", ())),
            }
        )


def take_from(user_properties: list[tuple[str, object]], *, read: bool = True) -> ItemResult | None:
    """Read this item's record off a report's properties, removing the bulky JSON.

    Every phase's report carries the item's properties (junitxml writes them from the
    teardown report), so each phase's copy is removed; ``read=False`` only removes it (a
    phase whose record is not needed is not parsed).
    """
    found = [v for n, v in user_properties if n == RECORD_PROPERTY]
    user_properties[:] = [(n, v) for n, v in user_properties if n != RECORD_PROPERTY]
    return ItemResult.from_json(json.loads(str(found[-1]))) if found and read else None
