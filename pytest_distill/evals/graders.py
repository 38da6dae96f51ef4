"""Each case's graders, built at collection so a bad spec, or a case without the reference
its graders compare with, is a one-line collection error before any model call."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from pytest_distill.evals.cases import CaseFileError, EvalCase, Suite
from pytest_distill.grading.references import uses_reference
from pytest_distill.grading.registry import Grader, GraderConfigError, Judge, make_grader
from pytest_distill.roles import call_chat
from pytest_distill.runtime import Runtime


def build_graders(
    config: pytest.Config, runtime: Runtime, suite: Suite
) -> dict[str, tuple[Grader, ...]]:
    """Graders per case, built at collection so a bad spec is a collection error."""
    judge = judge_for(runtime)
    cache: dict[str, Grader] = {}
    built: dict[str, tuple[Grader, ...]] = {}
    for case in suite.cases:
        graders = []
        for spec in case.graders:
            key = repr(sorted(spec.items(), key=str))
            if key not in cache:
                cache[key] = _make(config, spec, judge, suite.path, case)
            graders.append(cache[key])
        built[case.id] = tuple(graders)
        _check_reference(suite, case, built[case.id])
    return built


def _check_reference(suite: Suite, case: EvalCase, graders: tuple[Grader, ...]) -> None:
    """A case without a reference is an error when a grader's templates name the reference."""
    using = [g.name for g in graders if uses_reference(g)]
    if case.reference is None and using:
        raise CaseFileError(
            case.source or suite.path,
            case.line,
            f"case {case.id!r} has no reference; its grader(s) {', '.join(using)} compare with "
            "{{item.reference}}; add 'reference: ...' to the case, or grade it with graders "
            "that do not use the reference (e.g. python, or a 'reference' set in the spec)",
        )


def _make(
    config: pytest.Config,
    spec: Mapping[str, Any],
    judge: Judge | None,
    path: Path,
    case: EvalCase,
) -> Grader:
    def extra(s: Mapping[str, Any]) -> Grader | None:
        return config.hook.pytest_distill_make_grader(spec=s, config=config)  # type: ignore[no-any-return]

    try:
        return make_grader(spec, judge=judge, extra=extra)
    except GraderConfigError as exc:
        line = getattr(spec, "line", case.line)
        raise CaseFileError(path, line, str(exc)) from None


def judge_for(runtime: Runtime) -> Judge | None:
    """What ``score_model`` and ``label_model`` graders ask: the judge role, when it has a model."""
    if not runtime.role("judge").model:
        return None

    def judge(messages: list[dict[str, str]]) -> str:
        return call_chat(runtime.client("judge"), runtime.role("judge"), messages).reply

    return judge
