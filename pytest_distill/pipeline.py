"""``pytest --distill``: after the items ran, train on the passing teacher outputs and run the
fine-tuned student on the holdout, in the same session.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from pytest_distill.cassettes import recorder
from pytest_distill.evals.cases import split_of
from pytest_distill.evals.items import (
    CollectedSuite,
    DistillFile,
    DistillItem,
    collected,
    is_eval_file,
)
from pytest_distill.roles import RoleConfig
from pytest_distill.runtime import Runtime
from pytest_distill.training import dataset, jobs
from pytest_distill.training.state import STATE_FILE, State, StateError
from pytest_distill.verdict.results import results_of


def run(session: pytest.Session, runtime: Runtime) -> None:
    """Build the training set, train (or resume), then evaluate ``finetuned``; never raises
    for an expected failure: it is kept on the runtime and ends the session with exit code 7."""
    progress = _progress(session.config)
    try:
        model = _train(session.config, runtime, progress)
    except (dataset.DatasetError, jobs.DistillError, StateError) as exc:
        runtime.distill_error = str(exc)
        return
    if model is not None:
        _evaluate_finetuned(session, runtime, model)


def _train(config: pytest.Config, runtime: Runtime, progress: jobs.Progress) -> str | None:
    student = runtime.role("student")
    if not student.model:
        raise jobs.DistillError(
            "distill: the student role has no model to fine-tune; set ini distill_student_model"
        )
    data = _write_dataset(config, runtime, progress)
    trainer = trainer_role(runtime)
    state_path = runtime.settings.rootpath / STATE_FILE
    with recorder.distill_step(config, runtime, data.sha256, state_path) as state_path:
        state = State(state_path)
        outcome = jobs.train(
            runtime.client_for(trainer),
            data,
            _job_settings(runtime, student.model, trainer),
            state,
            progress,
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
    if outcome.status != "succeeded" or outcome.model is None:
        progress(
            f"distill: job {outcome.job_id} is {outcome.status}; run `pytest --distill` again to "
            "follow it and evaluate the fine-tuned student"
        )
        return None
    state.set_finetuned(outcome.model, str(trainer.endpoint), outcome.job_id)
    progress(f"distill: fine-tuned model {outcome.model} (job {outcome.job_id})")
    return outcome.model


def _write_dataset(
    config: pytest.Config, runtime: Runtime, progress: jobs.Progress
) -> dataset.Dataset:
    """Passing teacher outputs of the train split -> a validated training file on disk."""

    def keep(example: dict[str, Any], case_id: str) -> Any:
        return config.hook.pytest_distill_filter_example(
            example=example, case_id=case_id, config=config
        )

    settings = runtime.settings
    selection = dataset.select(
        results_of(config).items, max_tokens=settings.training.max_example_tokens, keep=keep
    )
    data = dataset.write(selection, settings.rootpath / ".distill" / "datasets")
    where = os.path.relpath(data.path, settings.rootpath)  # relative to the rootdir
    progress(f"distill: wrote {len(data.examples)} examples to {where} ({selection.explain()})")
    return data


def _job_settings(runtime: Runtime, base_model: str, trainer: RoleConfig) -> jobs.TrainingSettings:
    options = runtime.settings.training
    return jobs.TrainingSettings(
        base_model=base_model,
        trainer=str(trainer.endpoint),
        hyperparameters=options.hyperparameters,
        suffix=options.suffix,
        seed=options.seed,
        poll_interval=0.0 if runtime.replaying else options.poll_interval,
        timeout=options.job_timeout,
        no_wait=runtime.settings.no_wait,
    )


def trainer_role(runtime: Runtime) -> RoleConfig:
    student = runtime.role("student")
    endpoint = runtime.settings.training.trainer_endpoint or student.endpoint
    return dataclasses.replace(student, name="trainer", endpoint=endpoint)


def _evaluate_finetuned(session: pytest.Session, runtime: Runtime, model: str) -> None:
    trainer = trainer_role(runtime)
    runtime.use_finetuned(model, trainer.endpoint)
    suites = collected(session.config) or _collect_on_controller(session, runtime)
    items: list[pytest.Item] = []
    for file, suite, graders in ((s.file, s.suite, s.graders) for s in suites):
        for case in suite.cases:
            split = split_of(f"{suite.name}::{case.id}", runtime.settings.holdout)
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
    config = session.config
    config.hook.pytest_collection_modifyitems(session=session, config=config, items=items)
    start = len(session.items)
    session.items.extend(items)
    session.testscollected += len(items)
    runtime.order.update({item.nodeid: start + n for n, item in enumerate(items)})
    for index, item in enumerate(items):
        nextitem = items[index + 1] if index + 1 < len(items) else None
        item.ihook.pytest_runtest_protocol(item=item, nextitem=nextitem)
        if session.shouldfail or session.shouldstop:
            break


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
    reporter = config.pluginmanager.get_plugin("terminalreporter")

    def write(line: str) -> None:
        if reporter is not None:
            reporter.ensure_newline()
            if reporter._tw.width_of_current_line:  # -q: after the progress letters
                reporter._tw.line()
            reporter.write_line(line)

    return write
