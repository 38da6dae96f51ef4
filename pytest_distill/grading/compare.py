"""Structured (JSON) comparison: a short path-by-path diff and a partial-credit score.

The only module that imports deepdiff, and only when a comparison runs, so importing the
plugin stays cheap. Semantics, chosen for model output:

- JSON types stay distinct: ``1``, ``"1"`` and ``true`` never match one another.
- ``1`` and ``1.0`` are equal (JSON has a single number type and models write either);
  ``tolerance`` widens numeric equality to an absolute difference.
- ``ignore_order`` treats every array as a multiset. Actual arrays are first aligned to the
  expected order (exact matches, then the most similar leftovers), so diff paths use the
  expected indices and a changed item shows its changed fields rather than remove + add.
- ``exclude_paths`` accepts ``items[*].sku`` / ``order.customer.name`` (``$.`` prefix allowed;
  ``[*]`` is any index, a ``*`` key any key) or deepdiff's own ``root['items'][0]['sku']``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from pytest_distill.text import shorten

MAX_DIFF_LINES: Final = 10
MAX_REASON_PATHS: Final = 5  # a one-line reason names this many differing paths, then a count
_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n(.*?)\n?```", re.DOTALL)
_QUOTED = r"\['(?P<sq>[^']*)'\]|\[\"(?P<dq>[^\"]*)\"\]|\[(?P<index>\d+|\*)\]"
_NATIVE_SEGMENT = re.compile(_QUOTED)
_FRIENDLY_SEGMENT = re.compile(r"\.?(?P<bare>[^.\[\]'\"]+)|" + _QUOTED)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


class _JsonBool(str):
    """A JSON boolean while diffing: deepdiff's int/float type group would equate True and 1."""

    __slots__ = ()


class _Excluded(str):
    """Stands in for an excluded list item on both sides, so indices stay put."""

    __slots__ = ()


class _Wildcard:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_ANY_KEY: Final = _Wildcard("*")
_ANY_INDEX: Final = _Wildcard("[*]")
Segment = str | int
Pattern = tuple[Segment | _Wildcard, ...]


@dataclass(frozen=True, slots=True)
class JsonComparison:
    equal: bool
    score: float  # fraction of expected (plus unexpected) leaves that match; 1.0 when equal
    lines: tuple[str, ...]  # e.g. "items[0].qty: expected 2, got 3"; capped, then "... and N more"
    differences: int = 1  # how many paths differ (``lines`` may stop short of them all)

    def reason(self, limit: int = MAX_REASON_PATHS) -> str:
        """One line naming every differing path, up to ``limit`` of them, then how many more:
        ``JSON differs in 2 fields: minutes: expected 60, got 1; time: expected "10:00", got
        "9:00"``."""
        paths = [line for line in self.lines if not line.startswith("... and ")]
        total = max(self.differences, len(paths))
        shown = paths[:limit]
        if total <= 1:
            return f"JSON differs: {shown[0]}" if shown else "JSON differs"
        more = f"; and {total - len(shown)} more" if total > len(shown) else ""
        return f"JSON differs in {total} fields: {'; '.join(shown)}{more}"


def parse_model_json(text: str) -> Any:
    """Parse model output as JSON, tolerating a ```json fence around it (raises ValueError)."""
    stripped = text.strip()
    try:
        return json.loads(stripped)
    except ValueError:
        fenced = _FENCE.search(stripped)
        if fenced is None:
            raise
        return json.loads(fenced.group(1))


def parse_exclude_path(path: str) -> Pattern:
    """Turn one exclude path into segments; raise ValueError naming the path when unreadable."""
    native = path == "root" or path.startswith("root[")
    text = path[4:] if native else re.sub(r"^\$\.?", "", path)
    regex = _NATIVE_SEGMENT if native else _FRIENDLY_SEGMENT
    segments: list[Segment | _Wildcard] = []
    position = 0
    while position < len(text):
        found = regex.match(text, position)
        if found is None:
            raise ValueError(
                f"exclude path {path!r} is unreadable at {text[position:]!r}; write it as "
                "items[*].sku, order.customer.name or deepdiff's root['items'][0]['sku']"
            )
        segments.append(_segment(found))
        position = found.end()
    return tuple(segments)


def _segment(found: re.Match[str]) -> Segment | _Wildcard:
    groups = found.groupdict()
    if groups["index"] is not None:
        return _ANY_INDEX if groups["index"] == "*" else int(groups["index"])
    if groups.get("bare") == "*":
        return _ANY_KEY
    return next(groups[name] for name in ("bare", "sq", "dq") if groups.get(name) is not None)


def compare_json(
    actual: Any,
    expected: Any,
    *,
    ignore_order: bool = False,
    tolerance: float = 0.0,
    exclude_paths: Sequence[str] = (),
    max_lines: int = MAX_DIFF_LINES,
) -> JsonComparison:
    patterns = tuple(parse_exclude_path(path) for path in exclude_paths)
    want = _normalize(expected, (), patterns)
    got = _normalize(actual, (), patterns)
    if ignore_order:
        got = _align(want, got, tolerance)
    if _identical(want, got):  # nothing for the diff to find: skip it (it is slow)
        return JsonComparison(equal=True, score=1.0, lines=())
    levels = _diff_levels(want, got, tolerance)
    if not levels:
        return JsonComparison(equal=True, score=1.0, lines=())
    return JsonComparison(
        equal=False,
        score=_score(want, levels),
        lines=_lines(levels, max_lines),
        differences=len(levels),
    )


def _normalize(value: Any, path: tuple[Segment, ...], patterns: tuple[Pattern, ...]) -> Any:
    if any(_matches(path, pattern) for pattern in patterns):
        return _Excluded("<excluded>")
    if isinstance(value, bool):
        return _JsonBool("true" if value else "false")
    if isinstance(value, dict):
        items = ((key, _normalize(item, (*path, key), patterns)) for key, item in value.items())
        return {key: item for key, item in items if not isinstance(item, _Excluded)}
    if isinstance(value, list | tuple):
        return [_normalize(item, (*path, index), patterns) for index, item in enumerate(value)]
    return value


def _matches(path: tuple[Segment, ...], pattern: Pattern) -> bool:
    return len(path) == len(pattern) and all(map(_segment_matches, path, pattern))


def _segment_matches(segment: Segment, wanted: Segment | _Wildcard) -> bool:
    if wanted is _ANY_INDEX:
        return isinstance(segment, int)
    return isinstance(segment, str) if wanted is _ANY_KEY else segment == wanted


def _align(want: Any, got: Any, tolerance: float) -> Any:
    if isinstance(want, dict) and isinstance(got, dict):
        return {
            key: _align(want[key], item, tolerance) if key in want else item
            for key, item in got.items()
        }
    if not (isinstance(want, list) and isinstance(got, list)):
        return got
    slots: list[Any] = [None] * len(want)
    unused = list(got)
    for index, item in enumerate(want):  # exact (within tolerance) matches first
        found = next(
            (c for c in unused if _equal(item, _align(item, c, tolerance), tolerance)), None
        )
        if found is not None:
            unused.remove(found)
            slots[index] = _align(item, found, tolerance)
    for index, item in enumerate(want):  # then pair leftovers by similarity
        if slots[index] is None and unused:
            best = max(unused, key=lambda candidate: _similarity(item, candidate))
            unused.remove(best)
            slots[index] = _align(item, best, tolerance)
    return [slot for slot in slots if slot is not None] + unused


def _equal(want: Any, got: Any, tolerance: float) -> bool:
    if _is_number(want) and _is_number(got):
        return bool(abs(want - got) <= tolerance)
    if type(want) is not type(got):
        return False
    if isinstance(want, dict):
        return want.keys() == got.keys() and all(_equal(want[k], got[k], tolerance) for k in want)
    if isinstance(want, list):
        return len(want) == len(got) and all(map(_equal, want, got, [tolerance] * len(want)))
    return bool(want == got)


def _identical(want: Any, got: Any) -> bool:
    """Equal in every value and type (1 and 1.0 alike, as the diff takes them), so the diff
    would find nothing whatever the tolerance."""
    if _is_number(want) and _is_number(got):
        return bool(want == got)
    if type(want) is not type(got):
        return False
    if isinstance(want, dict):
        return want.keys() == got.keys() and all(_identical(want[k], got[k]) for k in want)
    if isinstance(want, list):
        return len(want) == len(got) and all(map(_identical, want, got))
    return bool(want == got)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _similarity(want: Any, got: Any) -> float:
    if isinstance(want, dict) and isinstance(got, dict) and want:
        return sum(key in got and _equal(want[key], got[key], 0.0) for key in want) / len(want)
    return 0.0


def _diff_levels(want: Any, got: Any, tolerance: float) -> list[tuple[str, Any]]:
    from deepdiff import DeepDiff  # deliberately lazy: deepdiff is slow to import

    tree = DeepDiff(
        want,
        got,
        view="tree",
        ignore_type_in_groups=[(int, float)],  # 1 == 1.0; booleans are _JsonBool by now
        math_epsilon=tolerance or None,
        threshold_to_diff_deeper=0,  # always report field by field, never "whole dict changed"
    )
    levels = [(kind, level) for kind, found in tree.items() for level in found]
    return sorted(levels, key=lambda entry: _sort_key(entry[1].path(output_format="list")))


def _sort_key(path: list[Any]) -> list[tuple[int, Any]]:
    return [(0, segment) if isinstance(segment, int) else (1, str(segment)) for segment in path]


def _score(want: Any, levels: list[tuple[str, Any]]) -> float:
    wrong = added = 0
    for kind, level in levels:
        if kind.endswith("_added"):
            added += _leaves(level.t2)
        else:
            wrong += _leaves(level.t1)
    return max(0.0, 1.0 - (wrong + added) / (_leaves(want) + added))


def _leaves(value: Any) -> int:
    if isinstance(value, dict) and value:
        return sum(_leaves(item) for item in value.values())
    if isinstance(value, list) and value:
        return sum(_leaves(item) for item in value)
    return 1


def _lines(levels: list[tuple[str, Any]], max_lines: int) -> tuple[str, ...]:
    lines = [_line(kind, level) for kind, level in levels]
    if len(lines) <= max_lines:
        return tuple(lines)
    return (*lines[:max_lines], f"... and {len(lines) - max_lines} more")


def _line(kind: str, level: Any) -> str:
    path = format_path(level.path(output_format="list"))
    if kind == "type_changes":
        want, got = level.t1, level.t2
        return f"{path}: expected {_show(want)} ({_kind(want)}), got {_show(got)} ({_kind(got)})"
    if kind.endswith("_removed"):
        what = "key" if kind.startswith("dictionary") else "item"
        return f"{path}: missing {what}, expected {_show(level.t1)}"
    if kind.endswith("_added"):
        what = "key" if kind.startswith("dictionary") else "item"
        return f"{path}: unexpected {what}, got {_show(level.t2)}"
    return f"{path}: expected {_show(level.t1)}, got {_show(level.t2)}"


def format_path(path: Sequence[Segment]) -> str:
    """``['items', 0, 'qty']`` -> ``items[0].qty``; the whole document is ``(root)``."""
    text = ""
    for segment in path:
        if isinstance(segment, int):
            text += f"[{segment}]"
        elif _IDENTIFIER.fullmatch(segment):
            text += f".{segment}" if text else segment
        else:
            text += f"[{segment!r}]"
    return text or "(root)"


def _show(value: Any) -> str:
    return shorten(json.dumps(_plain(value), ensure_ascii=False), 60)


def _plain(value: Any) -> Any:
    if isinstance(value, _JsonBool):
        return value == "true"
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value if value is None or isinstance(value, int | float | str) else repr(value)


def _kind(value: Any) -> str:
    kinds = ((_JsonBool, "boolean"), (str, "string"), (dict, "object"), (list, "array"))
    if _is_number(value):
        return "number"
    return next((name for cls, name in kinds if isinstance(value, cls)), type(value).__name__)


class JsonMatch:
    """``assert json_match(expected, ignore_order=True) == reply`` for Python evals.

    Strings (and bytes) on the other side are parsed as model JSON first. Not frozen: it keeps
    the last comparison so a failing assert can explain itself, as syrupy's snapshots do.
    """

    __hash__ = None  # type: ignore[assignment]  # equality is a comparison, not an identity

    def __init__(
        self,
        expected: Any,
        *,
        ignore_order: bool = False,
        tolerance: float = 0.0,
        exclude_paths: Sequence[str] = (),
    ) -> None:
        for path in exclude_paths:
            parse_exclude_path(path)  # fail where the matcher is written, not at the assert
        self.expected = expected
        self.ignore_order = ignore_order
        self.tolerance = tolerance
        self.exclude_paths = tuple(exclude_paths)
        self.last: JsonComparison | None = None

    def compare(self, other: object) -> JsonComparison:
        try:
            actual = _decoded(other)
        except ValueError as error:
            return JsonComparison(False, 0.0, (f"(root): not valid JSON ({error})",))
        return compare_json(
            actual,
            self.expected,
            ignore_order=self.ignore_order,
            tolerance=self.tolerance,
            exclude_paths=self.exclude_paths,
        )

    def __eq__(self, other: object) -> bool:
        if isinstance(other, JsonMatch):
            return other is self
        self.last = self.compare(other)
        return self.last.equal

    def __repr__(self) -> str:
        options = [f"{self.expected!r}"]
        options += ["ignore_order=True"] if self.ignore_order else []
        options += [f"tolerance={self.tolerance!r}"] if self.tolerance else []
        options += [f"exclude_paths={list(self.exclude_paths)!r}"] if self.exclude_paths else []
        return f"json_match({', '.join(options)})"


def _decoded(other: object) -> Any:
    if isinstance(other, bytes | bytearray):
        other = bytes(other).decode("utf-8", errors="replace")
    return parse_model_json(other) if isinstance(other, str) else other


def assertrepr(op: str, left: object, right: object) -> list[str] | None:
    """The explanation for a failed ``==`` with a JsonMatch on either side, else None."""
    if op != "==":
        return None
    if isinstance(left, JsonMatch):
        match, other = left, right
    elif isinstance(right, JsonMatch):
        match, other = right, left
    else:
        return None
    comparison = match.compare(other)  # recomputed: `last` may belong to another assert
    if comparison.equal:
        return None
    header = f"{shorten(repr(other))} does not match {shorten(repr(match))}"
    many = comparison.differences
    differs = f"JSON differs in {many} fields" if many > 1 else "JSON differs"
    return [header, f"{differs} (score {comparison.score:.2f}):", *comparison.lines]
