"""Checked at collection, before the first model call: the names the gate reads exist, and a
``--distill`` selection can train.

The process that collects the items checks them (the only one without xdist); the suites are
the ones collected before any deselection (``-k``, ``-m``, ``--deselect``, ``--lf``), so a
suite the selection left out is not mistaken for a typo.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

import pytest

from distill_shapes.training import MIN_EXAMPLES
from pytest_distill.evals import pyevals
from pytest_distill.evals.cases import split_of
from pytest_distill.evals.items import DistillItem, collected
from pytest_distill.roles import ROLES
from pytest_distill.runtime import Runtime
from pytest_distill.verdict.gate import Gate
from pytest_distill.verdict.tree import refs

_ROLE_FIXTURES = frozenset({*ROLES, "distill_client", "distill_role"})


def suite_of(item: pytest.Item) -> str | None:
    """The suite an item reports under, or None for an item that is not an eval."""
    if isinstance(item, DistillItem):
        return item.suite.name
    fixtures = set(getattr(item, "fixturenames", ()))
    if item.get_closest_marker("distill") is None and not fixtures & _ROLE_FIXTURES:
        return None
    return str(pyevals.marker_options(item).get("suite") or item.path.stem)


def gate_suites(gate: Gate) -> list[str]:
    """The suites the gate names, in the order it names them."""
    found: dict[str, None] = {}
    for clause in gate.clauses:
        for ref in refs(clause):
            if ref.suite is not None:
                found[ref.suite] = None
    return list(found)


def check_gate_names(gate: Gate | None, suites: Iterable[str]) -> None:
    """Every suite the gate names was collected; else one usage error, with the nearest name.
    (Roles, attributes and functions were checked when the gate was parsed.) A session that
    collected no eval at all (``pytest tests/test_unit.py``) has nothing to check."""
    known = sorted(set(suites))
    if gate is None or not known:
        return
    for name in gate_suites(gate):
        if name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1)
        fix = f"did you mean {close[0]!r}?" if close else f"the suites are {', '.join(known)}"
        raise pytest.UsageError(
            f"--distill-gate / ini distill_gate: no suite named {name!r} was collected; {fix}"
        )


def check_training_selection(
    runtime: Runtime, config: pytest.Config, kept: Sequence[pytest.Item]
) -> None:
    """Under ``--distill``: a selection that leaves train-split teacher cases out changes the
    training data (refused unless ``--distill-allow-subset``), and one that keeps fewer of them
    than a training file needs cannot train. Both are refused now, before any call."""
    holdout = runtime.settings.holdout
    wanted = {
        (s.suite.name, case.id)
        for s in collected(config)
        for case in s.suite.cases
        if _train(s.suite.name, case.id, holdout)
    }
    if not wanted:
        return
    teacher = [i for i in kept if isinstance(i, DistillItem) and i.role == "teacher"]
    chosen = {(i.suite.name, i.case.id) for i in teacher if i.split == "train"}
    missing = len(wanted - chosen)
    if not missing:
        return
    if not runtime.settings.training.allow_subset:
        raise pytest.UsageError(
            f"--distill: the selection leaves {missing} of {len(wanted)} train-split teacher "
            "cases out (-k, -m, --lf, --deselect, node ids or --distill-roles), and training on "
            "a subset changes the data and starts a new job; run them all, or pass "
            "--distill-allow-subset (ini distill_allow_subset)"
        )
    python_teacher = any(
        not isinstance(i, DistillItem) and suite_of(i) is not None for i in kept
    )  # a Python eval may make any number of calls: its examples are not counted ahead
    if len(chosen) < MIN_EXAMPLES and not python_teacher:
        raise pytest.UsageError(
            f"--distill: the selection keeps {len(chosen)} train-split teacher cases, so at most "
            f"{len(chosen)} training examples, and training needs at least {MIN_EXAMPLES}; "
            "select more cases (widen -k / -m, drop --deselect or node ids)"
        )


def _train(suite: str, case_id: str, holdout: float) -> bool:
    return split_of(f"{suite}::{case_id}", holdout) == "train"
