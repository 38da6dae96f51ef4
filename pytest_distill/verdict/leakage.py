"""No leakage: the gate never scores a model on a case it was trained on.

``pytest --distill`` writes a lineage manifest beside each training file
(``.distill/datasets/<hash>/manifest.json``, written by :mod:`pytest_distill.training.dataset`):
each line's case (``suite::id``) and the fingerprint of that case's content, and, once trained,
the fine-tuned model's id. When a fine-tuned model with a manifest is evaluated, its holdout
items whose case is in its training set (by fingerprint, so a renamed eval file still matches;
or by ``suite::id``, for manifests written before fingerprints) leave the gate. That covers a
changed ``distill_holdout`` and a model carried over from an earlier run, too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pytest_distill import paths
from pytest_distill.records import ItemResult


@dataclass(frozen=True, slots=True)
class TrainingSet:
    model: str
    cases: frozenset[str]  # "suite::id"
    fingerprints: frozenset[str]

    def holds(self, result: ItemResult) -> bool:
        return (
            bool(result.case_sha256) and result.case_sha256 in self.fingerprints
        ) or f"{result.suite}::{result.case_id}" in self.cases


@dataclass(frozen=True, slots=True)
class Exclusion:
    model: str
    cases: int  # holdout cases excluded from the gate

    def line(self) -> str:
        return (
            f"{self.cases} case{'s' if self.cases != 1 else ''} of the holdout "
            f"{'were' if self.cases != 1 else 'was'} in {self.model}'s training set: excluded"
        )


def training_sets(rootpath: Path) -> dict[str, TrainingSet]:
    """Every fine-tuned model a manifest under ``rootpath`` names, with its training cases."""
    found: dict[str, TrainingSet] = {}
    bases: dict[str, str] = {}
    for path in paths.manifests(rootpath):
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a manifest being written, or not ours: no model to match it to
        model = (manifest.get("training") or {}).get("fine_tuned_model")
        if not model:
            continue
        base = (manifest.get("training") or {}).get("base_model")
        if base:
            bases[str(model)] = str(base)
        lines = manifest.get("lines") or []
        known = found.get(model)
        found[model] = TrainingSet(
            model,
            frozenset(str(line["case"]) for line in lines if line.get("case"))
            | (known.cases if known else frozenset()),
            frozenset(str(line["case_sha256"]) for line in lines if line.get("case_sha256"))
            | (known.fingerprints if known else frozenset()),
        )
    return _with_earlier_stages(found, bases)


def _with_earlier_stages(
    found: dict[str, TrainingSet], bases: Mapping[str, str]
) -> dict[str, TrainingSet]:
    """A model fine-tuned from another fine-tuned model (a two-stage method's second stage)
    trained on that model's cases too."""
    chained = dict(found)
    for model, base in bases.items():
        seen = {model}
        while base in found and base not in seen:
            seen.add(base)
            earlier, own = found[base], chained[model]
            chained[model] = TrainingSet(
                model, own.cases | earlier.cases, own.fingerprints | earlier.fingerprints
            )
            base = bases.get(base, "")
    return chained


def leaked_cases(
    results: Iterable[ItemResult], sets: Mapping[str, TrainingSet], models: Iterable[str] = ()
) -> tuple[set[tuple[str, str]], tuple[Exclusion, ...]]:
    """The (suite, case id) of every fine-tuned item whose model trained on its case, and a
    count per model. ``models``: the configured fine-tuned model, besides the one that
    answered (an API may answer with another spelling of it)."""
    configured = tuple(m for m in models if m in sets)
    leaked: dict[str, set[tuple[str, str]]] = {}
    for result in results:
        if result.role not in ("finetuned", "sft"):
            continue
        answered = tuple(c.model for c in result.all_calls if c.model in sets)
        for model in dict.fromkeys((*answered, *configured)):
            if sets[model].holds(result):
                leaked.setdefault(model, set()).add((result.suite, result.case_id))
                break
    every = set().union(*leaked.values()) if leaked else set()
    return every, tuple(Exclusion(m, len(cases)) for m, cases in sorted(leaked.items()))
