"""The ``python`` grader: the user's own function, named by path or given as source.

``{"type": "python", "function": "pkg.mod:func"}`` (or ``pkg.mod.func``) is imported when the
grader is built, so a wrong path fails at collection. OpenAI-style ``"source"`` defines
``grade(sample, item)`` and runs in-process: it is the project's own code, not sandboxed.

The function receives ``sample`` = ``{"output_text": str, "output_json": value or None}`` and
``item`` (the case's variables plus ``reference`` and ``id``) and returns a score in [0, 1], a
bool, or ``(score, reason)``. It passes when the score reaches ``pass_threshold`` (default 1.0,
so a bool result passes exactly when True). Exceptions it raises propagate to the test.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_distill.grading.base import Grade, GraderConfigError, Sample, Spec
from pytest_distill.text import shorten

GradeFunction = Callable[[dict[str, Any], dict[str, Any]], Any]
_RETURNS = "return a float in [0, 1], a bool, or (score, reason)"


@dataclass(frozen=True, slots=True)
class PythonGrader:
    name: str
    function: GradeFunction
    where: str  # the dotted path or "source", for error messages
    pass_threshold: float = 1.0

    def grade(self, sample: Sample, item: Mapping[str, Any]) -> Grade:
        given = {"output_text": sample.output_text, "output_json": sample.json_or_none()}
        score, reason = self._read(self.function(given, dict(item)))
        if score >= self.pass_threshold:
            return Grade(self.name, score, True, reason)
        return Grade(
            self.name,
            score,
            False,
            reason or f"score {score:.3g} < pass_threshold {self.pass_threshold:g}",
        )

    def _read(self, result: Any) -> tuple[float, str]:
        score, reason = result if isinstance(result, tuple) and len(result) == 2 else (result, "")
        if isinstance(score, bool):
            return float(score), shorten(str(reason))
        if isinstance(score, int | float) and 0.0 <= score <= 1.0:
            return float(score), shorten(str(reason))
        raise GraderConfigError(
            f"python grader {self.name!r} ({self.where}) returned {result!r}; a grade function "
            f"must {_RETURNS}; fix the function's return value"
        )


def build_python(spec: Spec) -> PythonGrader:
    function, source = spec.get("function"), spec.get("source")
    if (function is None) == (source is None):
        spec.fail(
            "needs exactly one of 'function' and 'source'",
            "'function' is 'pkg.module:func'; 'source' is code defining grade(sample, item)",
            "give one of them",
        )
    if function is not None:
        loaded, where = _import(spec, function), str(function)
    else:
        loaded, where = _compile(spec, source), "source"
    threshold = spec.number("pass_threshold", 1.0, high=1.0)
    return PythonGrader(spec.name, loaded, where, threshold)


def load_function(path: str) -> GradeFunction:
    """Import ``pkg.mod:func`` or ``pkg.mod.func``; raise ValueError saying what failed."""
    module_name, attribute = path.split(":", 1) if ":" in path else path.rpartition(".")[::2]
    if not module_name or not attribute:
        raise ValueError("it is not a 'package.module:function' path")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"importing {module_name!r} failed ({error})") from None
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ValueError(f"{module_name!r} has no attribute {attribute!r}")
        found = getattr(found, part)
    if not callable(found):
        raise ValueError(f"{attribute!r} is a {type(found).__name__}, not a function")
    return found  # type: ignore[no-any-return]


def _import(spec: Spec, path: Any) -> GradeFunction:
    if not isinstance(path, str):
        spec.fail(f"has function={path!r}", "'function' is 'pkg.module:func'", "quote the path")
    try:
        return load_function(path)
    except ValueError as error:
        spec.fail(
            f"cannot load function {path!r}: {error}",
            "'function' is 'pkg.module:func' or 'pkg.module.func', importable from the test run",
            "fix the path, or make "
            "the module importable (pytest's 'pythonpath' ini option adds directories)",
        )


def _compile(spec: Spec, source: Any) -> GradeFunction:
    if not isinstance(source, str):
        spec.fail(f"has source={source!r}", "'source' is Python code as a string", "quote it")
    namespace: dict[str, Any] = {"__name__": f"distill_grader_{spec.name}"}
    try:
        exec(
            compile(source, f"<grader {spec.name}>", "exec"), namespace
        )  # the user's own code, as OpenAI's python grader runs it
    except Exception as error:
        where = f" at line {error.lineno}" if isinstance(error, SyntaxError) else ""
        spec.fail(
            f"has source that fails{where}: {type(error).__name__}: {error}",
            "'source' is Python code defining grade(sample, item)",
            "fix the code",
        )
    function = namespace.get("grade")
    if not callable(function):
        spec.fail(
            "has source without a grade() function",
            f"define def grade(sample, item): ... and {_RETURNS}",
            "add the function",
        )
    return function  # type: ignore[no-any-return]
