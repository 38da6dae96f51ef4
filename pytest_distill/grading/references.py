"""What a grader needs of a case's reference, read from its templates rather than guessed.

A grader *uses the reference* when one of its templates names ``{{item.reference}}`` (the
built-in graders default to it): a case without a reference cannot be graded by it, which the
collector reports as a one-line error. A ``python`` grader, or a ``score_model`` whose prompt
never names the reference, does not use it. A grader made by the ``pytest_distill_make_grader``
hook may say so itself with a boolean ``uses_reference`` attribute; without one its dataclass
fields are searched for templates like the built-ins'.

A case with several accepted references (an OpenAI-evals ``ideal`` list) passes a grader that
uses the reference when the output matches any of them, as OpenAI's evals do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pytest_distill.grading.base import Grade, Grader, Sample, Template

REFERENCE_PATH = ("item", "reference")


def uses_reference(grader: Grader) -> bool:
    declared = getattr(grader, "uses_reference", None)
    if isinstance(declared, bool):
        return declared
    return any(path[:2] == REFERENCE_PATH for t in templates_of(grader) for path in t.paths)


def templates_of(grader: object) -> Iterator[Template]:
    if not dataclasses.is_dataclass(grader) or isinstance(grader, type):
        return
    for field in dataclasses.fields(grader):
        yield from _templates(getattr(grader, field.name))


def _templates(value: Any) -> Iterator[Template]:
    if isinstance(value, Template):
        yield value
    elif isinstance(value, tuple):
        for part in value:
            yield from _templates(part)


def grade_any(grader: Grader, sample: Sample, items: Sequence[Mapping[str, Any]]) -> Grade:
    """The grade against the first reference, or against the first other one that passes.

    ``items`` is the case once per accepted reference (``EvalCase.items()``); a grader that does
    not use the reference grades once. When none passes, the best-scoring grade is kept.
    """
    if len(items) == 1 or not uses_reference(grader):
        return grader.grade(sample, items[0])
    grades = []
    for item in items:
        grade = grader.grade(sample, item)
        if grade.passed:
            return grade
        grades.append(grade)
    return max(grades, key=lambda g: g.score)
