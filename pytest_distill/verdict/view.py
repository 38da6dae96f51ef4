"""A JSON report read for people: the verdict, roles in order, cases with their changes.

Shared by the HTML page and the CI job summary. Reads every schema version
``pytest-distill/report/N`` defensively: a field a version lacks is shown as missing, and
optional fields (intervals, training lineage, prompts) appear only when the report has them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SCHEMA_PREFIX = "pytest-distill/report/"
ROLE_ORDER = ("teacher", "student", "sft", "finetuned", "judge")
# Changes between roles on one case: (key, label, role that failed, role that passed).
CHANGES = (
    ("student-wrong-finetuned-right", "student wrong, fine-tuned right", "student", "finetuned"),
    ("finetuned-wrong-teacher-right", "fine-tuned wrong, teacher right", "finetuned", "teacher"),
    ("finetuned-wrong-student-right", "fine-tuned wrong, student right", "finetuned", "student"),
)
_INTERVAL_KEYS = ("interval", "ci", "confidence_interval", "mean_score_interval", "score_interval")


class ReportError(ValueError):
    """The file is not a pytest-distill JSON report; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a session ended with: the gate's state and why, and its exit code; the terminal
    summary, the HTML page and the job summary all show this one."""

    state: str  # passed, failed, not-evaluated or no-gate
    headline: str
    reason: str
    exit_code: int | None = None  # None: a report written before the exit code was known
    other_failures: int = 0  # failed or errored items that are not below-passing grades


@dataclass(frozen=True, slots=True)
class Case:
    suite: str
    case_id: str
    split: str
    reference: Any
    roles: Mapping[str, Mapping[str, Any]]  # role -> the report's item

    def changes(self) -> tuple[str, ...]:
        return tuple(
            key
            for key, _, wrong, right in CHANGES
            if wrong in self.roles
            and right in self.roles
            and not self.roles[wrong].get("passed")
            and self.roles[right].get("passed")
        )

    def gap(self, candidate: str, baseline: str) -> float | None:
        """How far ``candidate`` scores below ``baseline`` here (None if either is missing)."""
        if candidate not in self.roles or baseline not in self.roles:
            return None
        return float(self.roles[baseline].get("score") or 0) - float(
            self.roles[candidate].get("score") or 0
        )


def schema_version(data: Any, source: str = "report") -> int:
    """The report's schema version; ReportError if ``data`` is not a report."""
    schema = data.get("schema") if isinstance(data, dict) else None
    if not isinstance(schema, str) or not schema.startswith(SCHEMA_PREFIX):
        raise ReportError(
            f"{source}: schema {schema!r} is not a pytest-distill report "
            f"({SCHEMA_PREFIX}N); pass the file written by --distill-report"
        )
    try:
        return int(schema.removeprefix(SCHEMA_PREFIX))
    except ValueError:
        raise ReportError(f"{source}: schema {schema!r} has no version number") from None


def verdict(data: Mapping[str, Any], other_failures: int = 0) -> Verdict:
    """Fails closed: only a gate whose ``passed`` is exactly true reads as passed.
    ``other_failures``: known only to the session that ran (a report does not record it)."""
    gate = data.get("gate")
    error = data.get("distill_error")
    code = data.get("exit_code")
    extra: dict[str, Any] = {
        "exit_code": code if isinstance(code, int) and not isinstance(code, bool) else None,
        "other_failures": other_failures,
    }
    if not isinstance(gate, Mapping):
        reason = error or "no gate configured (ini distill_gate)"
        return Verdict("no-gate", "No gate", str(reason), **extra)
    passed = gate.get("passed")
    expression = str(gate.get("expression", ""))
    split = gate.get("split", "holdout")
    if passed is True:
        return Verdict("passed", "Gate passed", f"on {split} cases: {expression}", **extra)
    if passed is False:
        return Verdict("failed", "Gate failed", str(gate.get("reason") or expression), **extra)
    reason = str(gate.get("reason") or error or "")
    deferred = data.get("deferred")  # --distill-no-wait: what to run to collect the rest
    if isinstance(deferred, str) and deferred and deferred not in reason:
        reason = f"{reason}; {deferred}" if reason else deferred
    return Verdict("not-evaluated", "Gate not evaluated", reason, **extra)


def roles(data: Mapping[str, Any]) -> list[str]:
    seen = list(data.get("scores") or {})
    for item in data.get("items") or ():
        if item.get("role") not in seen:
            seen.append(item.get("role"))
    return in_role_order(str(r) for r in seen)


def in_role_order(roles: Iterable[str]) -> list[str]:
    """``roles`` once each, the known ones in :data:`ROLE_ORDER`, then any others by name."""
    seen = set(roles)
    return [r for r in ROLE_ORDER if r in seen] + sorted(seen - set(ROLE_ORDER))


def gate_split(source: Mapping[str, Any] | Iterable[object]) -> str:
    """The cases the gate reads: ``holdout`` when any case is held out, else ``all``.
    ``source``: a report (the split its gate recorded wins) or the splits of a session's items."""
    if isinstance(source, Mapping):
        gate = source.get("gate")
        if isinstance(gate, Mapping) and gate.get("split"):
            return str(gate["split"])
        source = (item.get("split") for item in source.get("items") or ())
    return "holdout" if any(split == "holdout" for split in source) else "all"


def cases(data: Mapping[str, Any]) -> list[Case]:
    """One case per (suite, case id), roles in report order."""
    grouped: dict[tuple[str, str], dict[str, Any]] = {}
    for item in data.get("items") or ():
        key = (str(item.get("suite", "")), str(item.get("case_id", item.get("nodeid", ""))))
        entry = grouped.setdefault(key, {"split": item.get("split", ""), "roles": {}})
        entry["roles"].setdefault(str(item.get("role", "")), item)
        if entry.get("reference") is None:
            entry["reference"] = item.get("reference")
    return [
        Case(suite, case_id, str(e["split"]), e.get("reference"), e["roles"])
        for (suite, case_id), e in grouped.items()
    ]


def regressions(found: Sequence[Case], limit: int | None = None) -> list[tuple[Case, float]]:
    """Cases where the candidate (fine-tuned, else student) scores below the teacher, largest
    gap first."""
    candidate = "finetuned" if any("finetuned" in c.roles for c in found) else "student"
    gaps = [(c, c.gap(candidate, "teacher")) for c in found]
    ranked = sorted(((c, g) for c, g in gaps if g is not None and g > 0), key=lambda p: -p[1])
    return ranked[:limit] if limit is not None else ranked


def interval(value: Any) -> tuple[float, float] | None:
    """An interval an aggregate or clause may carry, in any of the shapes a report may use:
    ``[low, high]`` or ``{"low": .., "high": ..}`` under one of a few keys."""
    if not isinstance(value, Mapping):
        return None
    for key in _INTERVAL_KEYS:
        found = _pair(value.get(key))
        if found is not None:
            return found
    return None


def _pair(value: Any) -> tuple[float, float] | None:
    if isinstance(value, Mapping):
        low = value.get("low", value.get("lo", value.get("lower")))
        high = value.get("high", value.get("hi", value.get("upper")))
        value = [low, high]
    if isinstance(value, (list, tuple)) and len(value) == 2:
        low, high = value
        if _number(low) and _number(high):
            return float(low), float(high)
    return None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def extras(value: Mapping[str, Any], known: Sequence[str]) -> list[tuple[str, Any]]:
    """Scalar fields a newer report adds to a clause or aggregate, to show as they are."""
    return [
        (k, v)
        for k, v in value.items()
        if k not in known and k not in _INTERVAL_KEYS and isinstance(v, (str, int, float, bool))
    ]
