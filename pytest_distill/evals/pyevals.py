"""Python tests as evals: the ``distill`` marker's graders and the record of each test's calls.

A test that uses a role fixture is an eval item: its calls are reported with it, its score is
the mean of the marker's grades (or 1/0 from its own asserts), and a passing teacher test's
calls are training candidates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from pytest_distill.evals.cases import split_of
from pytest_distill.evals.fixtures import CLIENTS_KEY
from pytest_distill.evals.graders import judge_for
from pytest_distill.evals.items import error_line, format_failure, shown_reply
from pytest_distill.grading.registry import Grade, GraderConfigError, Sample, combine, make_grader
from pytest_distill.records import GradeRecord, ItemResult
from pytest_distill.roles import CallRecord
from pytest_distill.runtime import RUNTIME_KEY

GRADES_KEY = pytest.StashKey[tuple[Grade, ...]]()
MARKER_HELP = (
    "distill(graders=[...], reference=None, case_id=None, suite=None): grade the last reply "
    "of a Python eval with pytest-distill graders against the reference"
)


class DistillGradeError(AssertionError):
    def __init__(self, grades: tuple[Grade, ...], reply: str) -> None:
        super().__init__(format_failure(grades, reply))
        self.grades, self.reply = grades, reply


def marker_options(item: pytest.Item) -> Mapping[str, Any]:
    marker = item.get_closest_marker("distill")
    return marker.kwargs if marker else {}


def calls_of(item: pytest.Item) -> list[CallRecord]:
    return [call for client in item.stash.get(CLIENTS_KEY, []) for call in client.calls]


def grade_with_marker(item: pytest.Item) -> None:
    """After the test body: apply the marker's graders to the test's last reply."""
    options = marker_options(item)
    specs = options.get("graders")
    if not specs:
        return
    calls = calls_of(item)
    if not calls:
        raise pytest.UsageError(
            f"{item.nodeid}: the distill marker has graders but the test made no call "
            "through a role fixture (teacher, student, finetuned, distill_client)"
        )
    case = {"reference": options.get("reference"), "id": _case_id(item), **options.get("vars", {})}
    last = calls[-1]
    sample = Sample(output_text=last.reply, output_tools=last.tool_calls)
    grades = tuple(_grader(item, s).grade(sample, case) for s in specs)
    item.stash[GRADES_KEY] = grades
    if not combine(grades)[1]:
        raise DistillGradeError(grades, shown_reply(last))


def _grader(item: pytest.Item, spec: Mapping[str, Any]) -> Any:
    config = item.config

    def extra(s: Mapping[str, Any]) -> Any:
        return config.hook.pytest_distill_make_grader(spec=s, config=config)

    judge = judge_for(config.stash[RUNTIME_KEY])
    try:
        return make_grader(spec, judge=judge, extra=extra)
    except GraderConfigError as exc:
        raise pytest.UsageError(f"{item.nodeid}: distill marker grader: {exc}") from None


def record(
    item: pytest.Item,
    report: pytest.TestReport,
    raised: BaseException | None = None,
) -> None:
    """Attach the eval record of a Python test to its call-phase report.

    ``raised`` is what the test raised. An exception other than a failed assertion or grade
    (a cassette miss, a model call that failed, a bug in the test) leaves the case without a
    grade: it is recorded as errored, never as a score of 0."""
    calls = calls_of(item)
    if not calls and item.get_closest_marker("distill") is None:
        return
    role = _role(item, calls)
    if role is None:
        return
    grades = item.stash.get(GRADES_KEY, ())
    graded, graded_pass = combine(grades) if grades else (float(report.passed), report.passed)
    # A test that fails its own asserts scores 0, whatever the graders said.
    score = graded if report.passed or not graded_pass else 0.0
    suite = str(marker_options(item).get("suite") or item.path.stem)
    case_id = _case_id(item)
    holdout = item.config.stash[RUNTIME_KEY].settings.holdout
    own = [c for c in calls if c.role == role]
    errored = isinstance(raised, Exception) and not isinstance(
        raised, AssertionError | DistillGradeError
    )
    result = ItemResult(
        nodeid=item.nodeid,
        suite=suite,
        case_id=case_id,
        role=role,
        split=split_of(f"{suite}::{case_id}", holdout),
        passed=report.passed,
        score=score,
        grades=tuple(GradeRecord(g.name, g.score, g.passed, g.reason) for g in grades),
        call=own[-1] if own else None,
        calls=len(own),
        error=error_line(raised) if errored and raised is not None else None,
    )
    report.user_properties.extend(result.properties())


def _role(item: pytest.Item, calls: list[CallRecord]) -> str | None:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "distill_role" in callspec.params:
        return str(callspec.params["distill_role"])
    roles = {c.role for c in calls}
    return roles.pop() if len(roles) == 1 else None


def _case_id(item: pytest.Item) -> str:
    """The marker's ``case_id``, else the test's name without the role it ran as, so a test's
    teacher and student items share a key, hence a split, and pair up in the gate."""
    explicit = marker_options(item).get("case_id")
    if explicit:
        return str(explicit)
    callspec = getattr(item, "callspec", None)
    if callspec is None or "distill_role" not in callspec.params:
        return item.name
    role = str(callspec.params["distill_role"])  # its id: the plugin parametrizes ids=roles
    ids = _without_part(str(callspec.id), role)
    base = getattr(item, "originalname", item.name)
    return f"{base}[{ids}]" if ids else base


def _without_part(ids: str, part: str) -> str:
    """``ids`` (pytest joins parameter ids with ``-``) less the one id ``part``."""
    if ids == part:
        return ""
    if ids.startswith(f"{part}-"):
        return ids[len(part) + 1 :]
    if ids.endswith(f"-{part}"):
        return ids[: -len(part) - 1]
    return ids.replace(f"-{part}-", "-", 1)
