"""Built-in graders, mirroring OpenAI's grader types so evals can move over unchanged.

``make_grader(spec)`` turns one grader spec (OpenAI's grader JSON) into a ``Grader`` and checks
the spec while doing so, so a bad spec fails at collection. Every grade is a score in [0, 1]
plus pass/fail. Types and their defaults:

- ``string_check``: ``operation`` eq (default), ne, like (substring), ilike (case-insensitive
  substring); ``input`` defaults to ``{{sample.output_text}}``, ``reference`` to
  ``{{item.reference}}``. ``strip`` (default true) trims surrounding whitespace of both, unlike
  OpenAI's exact compare, because small models add a trailing newline.
- ``text_similarity``: see ``similarity.py``; ``pass_threshold`` is required.
- ``json``: structured comparison (``compare.py``) of ``{{sample.output_json}}`` with the
  reference (a string reference is parsed as JSON); options ``ignore_order``, ``tolerance``,
  ``exclude_paths``. Score = fraction of matching leaves; passes only when everything matches.
- ``regex``: ``pattern``, ``flags`` (ignorecase, multiline, dotall, verbose, ascii),
  ``fullmatch`` (default false: search). ``strip`` as for string_check.
- ``contains``: ``value`` (a string or list; default the reference), ``match`` all (default;
  score = fraction found) or any, ``ignore_case``.
- ``score_model``, ``label_model``: judged by the ``judge`` role; see ``judges.py``.
- ``python``: ``function`` ("pkg.mod:func" or "pkg.mod.func") or ``source`` defining
  ``grade(sample, item)``; see ``python.py``.
- ``tool_calls``: the reply's tool calls against the expected ``[{name, arguments}]`` (the
  reference), in any order, arguments compared with the ``json`` options; score = matched /
  (expected + unexpected). ``json_schema``: the output is JSON valid against ``schema``. See
  ``tools.py``.

Any other type goes to ``extra(spec)`` (the plugin's ``pytest_distill_make_grader`` hook).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from pytest_distill.grading.base import (
    Grade,
    Grader,
    GraderConfigError,
    Judge,
    Sample,
    Spec,
    Template,
    combine,
)
from pytest_distill.grading.compare import compare_json, parse_model_json
from pytest_distill.text import shorten

__all__ = [
    "KNOWN_TYPES",
    "ContainsCheck",
    "Grade",
    "Grader",
    "GraderConfigError",
    "JsonCheck",
    "Judge",
    "RegexCheck",
    "Sample",
    "StringCheck",
    "combine",
    "make_grader",
]

OUTPUT: Final = "{{sample.output_text}}"
REFERENCE: Final = "{{item.reference}}"
Operation = Literal["eq", "ne", "like", "ilike"]
_OPERATIONS: Final[dict[str, Callable[[str, str], bool]]] = {
    "eq": lambda got, want: got == want,
    "ne": lambda got, want: got != want,
    "like": lambda got, want: want in got,
    "ilike": lambda got, want: want.casefold() in got.casefold(),
}
_REGEX_FLAGS: Final = {
    "ignorecase": re.IGNORECASE,
    "multiline": re.MULTILINE,
    "dotall": re.DOTALL,
    "verbose": re.VERBOSE,
    "ascii": re.ASCII,
}


@dataclass(frozen=True, slots=True)
class StringCheck:
    name: str
    operation: Operation
    input: Template
    reference: Template
    strip: bool = True

    def grade(self, sample: Sample, item: Mapping[str, Any]) -> Grade:
        got, want = self.input.render(sample, item), self.reference.render(sample, item)
        if self.strip:
            got, want = got.strip(), want.strip()
        if _OPERATIONS[self.operation](got, want):
            return Grade(self.name, 1.0, True)
        return Grade(self.name, 0.0, False, self._reason(got, want))

    def _reason(self, got: str, want: str) -> str:
        got_, want_ = repr(shorten(got, 60)), repr(shorten(want, 60))
        if self.operation == "eq":
            return f"expected {want_}, got {got_}"
        if self.operation == "ne":
            return f"expected anything but {want_}, got it"
        case = " (ignoring case)" if self.operation == "ilike" else ""
        return f"{want_} not found{case} in {got_}"


@dataclass(frozen=True, slots=True)
class RegexCheck:
    name: str
    pattern: re.Pattern[str]
    input: Template
    fullmatch: bool = False
    strip: bool = True

    def grade(self, sample: Sample, item: Mapping[str, Any]) -> Grade:
        got = self.input.render(sample, item)
        got = got.strip() if self.strip else got
        found = self.pattern.fullmatch(got) if self.fullmatch else self.pattern.search(got)
        if found:
            return Grade(self.name, 1.0, True)
        how = "fully match" if self.fullmatch else "match"
        return Grade(
            self.name, 0.0, False, f"{shorten(got, 60)!r} does not {how} /{self.pattern.pattern}/"
        )


@dataclass(frozen=True, slots=True)
class ContainsCheck:
    name: str
    values: tuple[Template, ...]
    input: Template
    match: Literal["all", "any"] = "all"
    ignore_case: bool = False

    def grade(self, sample: Sample, item: Mapping[str, Any]) -> Grade:
        fold = str.casefold if self.ignore_case else str
        got = fold(self.input.render(sample, item))
        wanted = _flatten(template.resolve(sample, item) for template in self.values)
        missing = [value for value in wanted if fold(value) not in got]
        found = len(wanted) - len(missing)
        if self.match == "any":
            passed, score = found > 0 or not wanted, float(found > 0 or not wanted)
        else:
            passed, score = not missing, found / len(wanted) if wanted else 1.0
        reason = "" if passed else f"missing {', '.join(repr(shorten(m, 40)) for m in missing)}"
        return Grade(self.name, score, passed, reason)


def _flatten(values: Any) -> list[str]:
    flat: list[str] = []
    for value in values:
        items = value if isinstance(value, list) else [value]
        flat += [item if isinstance(item, str) else str(item) for item in items]
    return flat


@dataclass(frozen=True, slots=True)
class JsonCheck:
    name: str
    input: Template
    reference: Template
    ignore_order: bool = False
    tolerance: float = 0.0
    exclude_paths: tuple[str, ...] = ()

    def grade(self, sample: Sample, item: Mapping[str, Any]) -> Grade:
        if self.input.sole is not None and self.input.sole[:2] == ("sample", "output_json"):
            try:
                sample.output_json  # noqa: B018  # parse now to report *why* it is not JSON
            except ValueError as error:
                detail = (f"output: {shorten(sample.output_text)!r}",)
                return Grade(self.name, 0.0, False, f"output is not valid JSON ({error})", detail)
        result = compare_json(
            self.input.resolve(sample, item),
            self._expected(sample, item),
            ignore_order=self.ignore_order,
            tolerance=self.tolerance,
            exclude_paths=self.exclude_paths,
        )
        if result.equal:
            return Grade(self.name, 1.0, True)
        return Grade(self.name, result.score, False, result.reason(), result.lines)

    def _expected(self, sample: Sample, item: Mapping[str, Any]) -> Any:
        expected = self.reference.resolve(sample, item)
        if not isinstance(expected, str):
            return expected
        try:
            return parse_model_json(expected)
        except ValueError as error:
            raise GraderConfigError(
                f"grader {self.name!r} (json): the reference of case {item.get('id')!r} is not "
                f"valid JSON ({error}); a json grader compares JSON values; write the reference "
                "as a JSON value (quote a string, e.g. '\"yes\"') or use string_check"
            ) from None


def _string_check(spec: Spec, judge: Judge | None) -> Grader:
    operation: Any = spec.choice("operation", list(_OPERATIONS), "eq")
    return StringCheck(
        spec.name,
        operation,
        spec.template("input", OUTPUT),
        spec.template("reference", REFERENCE),
        spec.boolean("strip", True),
    )


def _regex(spec: Spec, judge: Judge | None) -> Grader:
    pattern = spec.require("pattern", "add 'pattern', a Python regular expression")
    names = spec.strings("flags", [])
    unknown = [name for name in names if name.lower() not in _REGEX_FLAGS]
    if unknown:
        spec.fail(
            f"has unknown flag(s) {unknown!r}",
            f"flags: {', '.join(_REGEX_FLAGS)}",
            "use those names",
        )
    flags = re.NOFLAG
    for name in names:
        flags |= _REGEX_FLAGS[name.lower()]
    try:
        compiled = re.compile(pattern, flags)
    except (re.error, TypeError) as error:
        spec.fail(
            f"has pattern {pattern!r} that does not compile ({error})",
            "'pattern' is a Python regular expression",
            "fix the pattern",
        )
    fullmatch = spec.boolean("fullmatch", False)
    return RegexCheck(
        spec.name, compiled, spec.template("input", OUTPUT), fullmatch, spec.boolean("strip", True)
    )


def _contains(spec: Spec, judge: Judge | None) -> Grader:
    values = spec.strings("value", REFERENCE)
    if not values:
        spec.fail("has an empty 'value'", "'value' is a string or a non-empty list", "add one")
    templates = tuple(spec.template_of(value, "value") for value in values)
    match: Any = spec.choice("match", ["all", "any"], "all")
    return ContainsCheck(
        spec.name,
        templates,
        spec.template("input", OUTPUT),
        match,
        spec.boolean("ignore_case", False),
    )


def _json(spec: Spec, judge: Judge | None) -> Grader:
    exclude = spec.exclude_paths(
        "paths look like items[*].sku, order.customer.name or root['items'][0]['sku']"
    )
    return JsonCheck(
        spec.name,
        spec.template("input", "{{sample.output_json}}"),
        spec.template("reference", REFERENCE),
        spec.boolean("ignore_order", False),
        spec.number("tolerance", 0.0),
        exclude,
    )


def _text_similarity(spec: Spec, judge: Judge | None) -> Grader:
    from pytest_distill.grading.similarity import build_text_similarity

    return build_text_similarity(spec)


def _score_model(spec: Spec, judge: Judge | None) -> Grader:
    from pytest_distill.grading.judges import build_score_model

    return build_score_model(spec, judge)


def _label_model(spec: Spec, judge: Judge | None) -> Grader:
    from pytest_distill.grading.judges import build_label_model

    return build_label_model(spec, judge)


def _python(spec: Spec, judge: Judge | None) -> Grader:
    from pytest_distill.grading.python import build_python

    return build_python(spec)


def _tool_calls(spec: Spec, judge: Judge | None) -> Grader:
    from pytest_distill.grading.tools import build_tool_calls

    return build_tool_calls(spec)


def _json_schema(spec: Spec, judge: Judge | None) -> Grader:
    from pytest_distill.grading.tools import build_json_schema

    return build_json_schema(spec)


_Builder = Callable[[Spec, Judge | None], Grader]
# type -> (builder, keys it accepts besides type and name)
_BUILTINS: Final[dict[str, tuple[_Builder, tuple[str, ...]]]] = {
    "string_check": (_string_check, ("operation", "input", "reference", "strip")),
    "text_similarity": (
        _text_similarity,
        ("evaluation_metric", "input", "reference", "pass_threshold"),
    ),
    "json": (_json, ("input", "reference", "ignore_order", "tolerance", "exclude_paths")),
    "regex": (_regex, ("pattern", "flags", "fullmatch", "input", "strip")),
    "contains": (_contains, ("value", "match", "ignore_case", "input")),
    # model and sampling_params are accepted so OpenAI specs load; the judge role picks the model
    "score_model": (
        _score_model,
        ("input", "range", "pass_threshold", "model", "sampling_params"),
    ),
    "label_model": (_label_model, ("input", "labels", "passing_labels", "model")),
    "python": (_python, ("function", "source", "pass_threshold", "image_tag")),
    "tool_calls": (
        _tool_calls,
        ("reference", "ignore_order", "tolerance", "exclude_paths"),
    ),
    "json_schema": (_json_schema, ("schema", "input")),
}
KNOWN_TYPES: Final = tuple(_BUILTINS)


def make_grader(
    spec: Mapping[str, Any],
    *,
    judge: Judge | None = None,
    extra: Callable[[Mapping[str, Any]], Grader | None] | None = None,
) -> Grader:
    """Build and check the grader for ``spec``; raise GraderConfigError when it cannot work."""
    kind = _grader_type(spec)
    if kind in _BUILTINS:
        builder, keys = _BUILTINS[kind]
        return builder(Spec(spec, keys), judge)
    grader = extra(spec) if extra is not None else None
    if grader is None:
        raise GraderConfigError(
            f"unknown grader type {kind!r}; built-in types are {', '.join(KNOWN_TYPES)}; fix the "
            "spelling, or implement the pytest_distill_make_grader hook for your own type"
        )
    return grader


def _grader_type(spec: Any) -> str:
    kind = spec.get("type") if isinstance(spec, Mapping) else None
    if not isinstance(kind, str):
        raise GraderConfigError(
            f"grader spec {spec!r} has no 'type'; a grader is a mapping with a 'type' (one of "
            f"{', '.join(KNOWN_TYPES)}); add one, e.g. {{type: string_check, operation: eq}}"
        )
    return kind
