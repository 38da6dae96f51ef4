"""``pytest --distill``: after the items ran, train on the passing teacher outputs and run the
fine-tuned student on the holdout, in the same session.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import tempfile
from pathlib import Path
from typing import Any

import pytest

from pytest_distill import paths, xdist
from pytest_distill.cassettes import recorder
from pytest_distill.evals.cases import split_of
from pytest_distill.evals.items import (
    CollectedSuite,
    DistillFile,
    DistillItem,
    collected,
    is_eval_file,
)
from pytest_distill.options import TrainingSettings
from pytest_distill.roles import RoleConfig
from pytest_distill.runtime import Runtime, terminal_line
from pytest_distill.training import dataset, jobs
from pytest_distill.training.state import State, StateError
from pytest_distill.verdict.results import results_of


def preflight(runtime: Runtime) -> None:
    """At session start, before any model call: what ``--distill`` needs to train, else a
    :class:`pytest.UsageError` saying what to set. (The training settings were checked when
    the options were read.)"""
    settings = runtime.settings
    for role, why in (("teacher", "whose outputs to train on"), ("student", "to fine-tune")):
        if not runtime.role(role).model:
            raise pytest.UsageError(
                f"--distill: the {role} role has no model {why}; set ini distill_{role}_model "
                f"(or --distill-model {role}=MODEL)"
            )
    trainer = trainer_role(runtime)
    if trainer.endpoint.kind == "openai" and not trainer.api_key():
        where = f"ini {trainer.api_key_env}" if trainer.api_key_env else "OPENAI_API_KEY"
        raise pytest.UsageError(
            f"--distill: no API key for the trainer endpoint openai; set {where} or "
            "DISTILL_TRAINER_API_KEY (or ini distill_trainer_endpoint for another trainer)"
        )
    folder = paths.folder(settings.rootpath)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise pytest.UsageError(
            f"--distill: cannot write to {folder} ({exc.strerror or exc}); make it writable"
        ) from None


def run(session: pytest.Session, runtime: Runtime) -> None:
    """Build the training set, train (or resume), then evaluate ``finetuned``; never raises
    for an expected failure: it is kept on the runtime and ends the session with exit code 7."""
    progress = _progress(session.config)
    left_out = _left_out(session, runtime)
    if left_out and not runtime.settings.training.allow_subset:
        runtime.distill_error = (
            f"distill: {left_out[0]} of {left_out[1]} train-split teacher cases did not run "
            "(-k, --lf, --deselect, node ids or --distill-roles left them out), and training "
            "on a subset starts a new job; run them all, or pass --distill-allow-subset "
            "(ini distill_allow_subset)"
        )
        return
    try:
        model = _train(session.config, runtime, progress)
    except (dataset.DatasetError, jobs.DistillError, StateError) as exc:
        runtime.distill_error = str(exc)
        return
    if model is not None:
        _evaluate_finetuned(session, runtime, model)


def _left_out(session: pytest.Session, runtime: Runtime) -> tuple[int, int] | None:
    """(left out, all) train-split teacher cases of the collected eval files that the
    selection did not keep; None when it kept every one. On an xdist controller, which
    collected nothing, the files are the ones the workers ran and the kept cases those whose
    teacher results came back. A kept case whose item errored shows as an error already."""
    holdout = runtime.settings.holdout
    controller = xdist.is_controller(session.config)
    suites = collected(session.config) or (
        _collect_on_controller(session, runtime) if controller else []
    )
    wanted = {
        (s.suite.name, case.id)
        for s in suites
        for case in s.suite.cases
        if split_of(f"{s.suite.name}::{case.id}", holdout) == "train"
    }
    if controller:
        results = results_of(session.config).items
        kept = {(r.suite, r.case_id) for r in results if r.role == "teacher"}
    else:
        kept = {
            (item.suite.name, item.case.id)
            for item in session.items
            if isinstance(item, DistillItem) and item.role == "teacher"
        }
    missing = len(wanted - kept)
    return (missing, len(wanted)) if missing else None


def _train(config: pytest.Config, runtime: Runtime, progress: jobs.Progress) -> str | None:
    student = runtime.role("student")
    if not student.model:
        raise jobs.DistillError(
            "distill: the student role has no model to fine-tune; set ini distill_student_model"
        )
    data, selection = _write_dataset(config, runtime, progress)
    trainer = trainer_role(runtime)
    state_path = paths.state_file(runtime.settings.rootpath)
    with recorder.distill_step(config, runtime, data.sha256, state_path) as state_path:
        state = State(state_path)
        outcome = jobs.train(
            runtime.client_for(trainer),
            data,
            _job_settings(runtime, student.model, trainer),
            state,
            progress,
            replaying=runtime.replaying,
        )
    dataset.update_manifest(
        data,
        {
            "base_model": student.model,
            "trainer": str(trainer.endpoint),
            "file_id": outcome.file_id,
            "job_id": outcome.job_id,
            "status": outcome.status,
            "fine_tuned_model": outcome.model,
        },
    )
    runtime.training = {
        "base_model": student.model,
        "trainer": str(trainer.endpoint),
        **_lineage(runtime.settings.rootpath, data, selection, outcome),
        "hyperparameters": dict(runtime.settings.training.hyperparameters),
    }
    if outcome.status != "succeeded" or outcome.model is None:
        runtime.distill_deferred = True
        progress(
            f"distill: job {outcome.job_id} is {outcome.status}; the gate is deferred: run "
            "`pytest --distill` again to follow the job, evaluate the fine-tuned student and "
            "apply the gate"
        )
        return None
    state.set_finetuned(outcome.model, str(trainer.endpoint), outcome.job_id)
    progress(f"distill: fine-tuned model {outcome.model} (job {outcome.job_id})")
    if trainer.endpoint.kind == "local":
        server_dir = paths.server_dir(runtime.settings.rootpath)
        progress(
            f"distill: serve it elsewhere: distill-server export {shlex.quote(outcome.model)} "
            f"--data-dir {shlex.quote(str(server_dir))} --to DIR --format peft (or merged, "
            "ollama)"
        )
    return outcome.model


def _write_dataset(
    config: pytest.Config, runtime: Runtime, progress: jobs.Progress
) -> tuple[dataset.Dataset, dataset.Selection]:
    """Passing teacher outputs of the train split -> a validated training file on disk."""

    def keep(example: dict[str, Any], case_id: str) -> Any:
        return config.hook.pytest_distill_filter_example(
            example=example, case_id=case_id, config=config
        )

    settings = runtime.settings
    selection = dataset.select(
        results_of(config).items, max_tokens=settings.training.max_example_tokens, keep=keep
    )
    data = dataset.write(selection, paths.datasets(settings.rootpath))
    where = os.path.relpath(data.path, settings.rootpath)  # relative to the rootdir
    progress(f"distill: wrote {len(data.examples)} examples to {where} ({selection.explain()})")
    return data, selection


def _lineage(
    root: Path, data: dataset.Dataset, selection: dataset.Selection, outcome: jobs.Outcome
) -> dict[str, Any]:
    """What the report shows of the distill step: data, file, job, model and loss curve."""
    return {
        "dataset": _relative(data.path, root),
        "manifest": _relative(data.manifest_path, root),
        "sha256": data.sha256,
        "examples": len(data.examples),
        "selection": selection.explain(),
        "file_id": outcome.file_id,
        "job_id": outcome.job_id,
        "status": outcome.status,
        "fine_tuned_model": outcome.model,
        "reused": outcome.reused,
        "metrics": list(outcome.metrics),
    }


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _job_settings(runtime: Runtime, base_model: str, trainer: RoleConfig) -> TrainingSettings:
    training = runtime.settings.training
    return dataclasses.replace(
        training,
        base_model=base_model,
        trainer_endpoint=trainer.endpoint,
        poll_interval=0.0 if runtime.replaying else training.poll_interval,
    )


def trainer_role(runtime: Runtime) -> RoleConfig:
    student = runtime.role("student")
    training = runtime.settings.training
    endpoint = training.trainer_endpoint or student.endpoint
    key_env = training.api_key_env or student.api_key_env
    return dataclasses.replace(student, name="trainer", endpoint=endpoint, api_key_env=key_env)


def _evaluate_finetuned(session: pytest.Session, runtime: Runtime, model: str) -> None:
    trainer = trainer_role(runtime)
    runtime.use_finetuned(model, trainer.endpoint, trainer.api_key_env)
    on_controller = xdist.is_controller(session.config)
    suites = collected(session.config) or (
        _collect_on_controller(session, runtime) if on_controller else []
    )
    chosen = _chosen_cases(session, on_controller)
    items: list[pytest.Item] = []
    for file, suite, graders in ((s.file, s.suite, s.graders) for s in suites):
        for case in suite.cases:
            split = split_of(f"{suite.name}::{case.id}", runtime.settings.holdout)
            if (file.nodeid, case.id) not in chosen:
                continue
            if split == "holdout" or runtime.settings.holdout == 0:
                items.append(
                    DistillItem.from_parent(
                        file,
                        name=f"{case.id}[finetuned]",
                        suite=suite,
                        case=case,
                        role="finetuned",
                        split=split,
                        graders=graders[case.id],
                    )
                )
    start = len(session.items)
    session.items.extend(items)
    session.testscollected += len(items)
    runtime.order.update({item.nodeid: start + n for n, item in enumerate(items)})
    for item in items:
        if isinstance(item, DistillItem) and item.batched:  # --distill-batch finetuned
            runtime.plan_batch(item.role, item.nodeid, item.batch_bodies)
    for index, item in enumerate(items):
        nextitem = items[index + 1] if index + 1 < len(items) else None
        item.ihook.pytest_runtest_protocol(item=item, nextitem=nextitem)
        if session.shouldfail or session.shouldstop:
            break


def _chosen_cases(session: pytest.Session, on_controller: bool) -> set[tuple[str, str]]:
    """(file, case id) of the cases the selection kept (-k, --deselect, node ids): pytest's
    own hooks chose them once; calling every plugin's pytest_collection_modifyitems again
    would run theirs twice. On an xdist controller, the cases whose items the workers ran."""
    if on_controller:
        return {
            (r.nodeid.split("::")[0], r.case_id)
            for r in results_of(session.config).items
            if "::" in r.nodeid
        }
    return {
        (item.parent.nodeid, item.case.id)
        for item in session.items
        if isinstance(item, DistillItem) and item.parent is not None
    }


def _collect_on_controller(session: pytest.Session, runtime: Runtime) -> list[CollectedSuite]:
    """Under xdist the controller collected nothing: read the eval files whose items the
    workers ran, so the fine-tuned student's items run here and report like the rest."""
    paths = {
        r.nodeid.split("::")[0]
        for r in results_of(session.config).items
        if "::" in r.nodeid
        and is_eval_file(Path(r.nodeid.split("::")[0]), runtime.settings.patterns)
    }
    for path in sorted(paths):
        file = DistillFile.from_parent(session, path=session.config.rootpath / path)
        for _ in file.collect():  # collecting records the suite; its items ran on the workers
            pass
    return collected(session.config)


def _progress(config: pytest.Config) -> jobs.Progress:
    return terminal_line(config)
