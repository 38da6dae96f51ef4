"""``pytest --distill``: after the items ran, train on the passing teacher outputs and run the
fine-tuned student on the holdout, in the same session.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from distill_shapes.methods import method_json
from pytest_distill import paths, xdist
from pytest_distill.cassettes import recorder
from pytest_distill.evals.cases import EvalCase, split_of
from pytest_distill.evals.items import (
    CollectedSuite,
    DistillFile,
    DistillItem,
    collected,
    is_eval_file,
)
from pytest_distill.grading.base import Sample, combine
from pytest_distill.grading.references import grade_any
from pytest_distill.options import TrainingSettings
from pytest_distill.options.training import openai_reward_refusal
from pytest_distill.records import ItemResult
from pytest_distill.roles import RoleConfig, call_chat, describe_error
from pytest_distill.runtime import Runtime, terminal_line
from pytest_distill.training import dataset, jobs, methods
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
        model = _train(session, runtime, progress)
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
    wanted = {
        (s.suite.name, case.id)
        for s in _suites(session, runtime)
        for case in s.suite.cases
        if split_of(f"{s.suite.name}::{case.id}", holdout) == "train"
    }
    if xdist.is_controller(session.config):
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


def _train(session: pytest.Session, runtime: Runtime, progress: jobs.Progress) -> str | None:
    """Train by the method (``distill_method``): the fine-tuned model to evaluate, or None
    while a job runs on. Two-stage methods leave their first model as role ``sft``."""
    config = session.config
    student = runtime.role("student")
    if not student.model:
        raise jobs.DistillError(
            "distill: the student role has no model to fine-tune; set ini distill_student_model"
        )
    method = runtime.settings.training.method
    if method == "sft":
        data, selection = _write_dataset(config, runtime, progress)
        with _step(config, runtime, data.sha256) as state:
            outcome = _stage(runtime, state, "sft", data, student.model, progress)
        return _finish(runtime, state, data, selection, outcome, progress)
    if method == "dpo":
        results = results_of(config).items
        pairs = methods.select_pairs(
            results,
            methods.student_failures(results),
            max_tokens=runtime.settings.training.max_example_tokens,
        )
        file = _write_method_file(runtime, pairs, progress, _PAIRS_FIX_DPO)
        with _step(config, runtime, file.sha256, "dpo") as state:
            outcome = _stage(runtime, state, "dpo", file, student.model, progress)
        return _finish(runtime, state, file, pairs, outcome, progress)
    data, selection = _write_dataset(config, runtime, progress)
    with _step(config, runtime, data.sha256, method.replace("+", "-")) as state:
        first = _stage(runtime, state, "sft", data, student.model, progress)
        if first.status != "succeeded" or first.model is None:
            return _finish(runtime, state, data, selection, first, progress)
        progress(f"distill: stage 1 (sft) made {first.model}; stage 2 starts from it")
        trainer = trainer_role(runtime)
        runtime.use_finetuned(first.model, trainer.endpoint, trainer.api_key_env, label="sft")
        file, chosen = _second_file(session, runtime, state, first, progress)
        second = _stage(
            runtime,
            state,
            _last_stage(method),
            file,
            first.model,
            progress,
            after=first,
        )
    return _finish(runtime, state, file, chosen, second, progress, first=(data, selection, first))


def _last_stage(method: str) -> str:
    """The stage whose model a method ends with: ``sft``, ``dpo`` (dpo, sft+dpo) or ``rl``."""
    return "sft" if method == "sft" else "rl" if method == "sft+rl" else "dpo"


_PAIRS_FIX_DPO = (
    "add train-split cases the student fails, or run sft+dpo (ini distill_method), whose "
    "pairs come from the SFT model's own samples"
)
_PAIRS_FIX_SFT_DPO = (
    "raise ini distill_pair_samples or distill_pair_temperature so that more samples fail, "
    "add cases, or stop at sft (ini distill_method = sft)"
)


@contextlib.contextmanager
def _step(config: pytest.Config, runtime: Runtime, sha256: str, tag: str = "") -> Iterator[State]:
    """The distill step's traffic in its cassette (the first stage's file names it), and the
    state its jobs resume from."""
    path = paths.state_file(runtime.settings.rootpath)
    with recorder.distill_step(config, runtime, sha256, path, tag) as state_path:
        yield State(state_path)


def _stage(
    runtime: Runtime,
    state: State,
    name: str,
    data: jobs.Dataset,
    base_model: str,
    progress: jobs.Progress,
    *,
    after: jobs.Outcome | None = None,
) -> jobs.Outcome:
    """One stage's job (``sft``, ``dpo`` or ``rl``), found, resumed or started, then followed;
    ``.distill/state.json`` keeps it under the method."""
    trainer = trainer_role(runtime)
    settings = _job_settings(runtime, base_model, trainer)
    method = _method_json(runtime, name, data)
    # The stage's file is kept before its job starts: a run killed while the job trains picks
    # the same file up again (no new samples, so the same job key) instead of starting another.
    state.save_stage(
        runtime.settings.training.method,
        name,
        {
            "job_key": jobs.job_key(settings, data, method),
            "training_file": _relative(data.path, runtime.settings.rootpath),
            "sha256": data.sha256,
            "base_model": base_model,
            "after": after.job_id if after is not None else None,
        },
    )
    outcome = jobs.train(
        runtime.client_for(trainer),
        data,
        settings,
        state,
        progress,
        replaying=runtime.replaying,
        method=method,
    )
    state.save_stage(
        runtime.settings.training.method,
        name,
        {"job_id": outcome.job_id, "status": outcome.status, "fine_tuned_model": outcome.model},
    )
    return outcome


def _method_json(runtime: Runtime, stage: str, data: jobs.Dataset) -> dict[str, Any] | None:
    """The job's ``method`` past SFT (None for SFT: the job create writes it as always)."""
    training = runtime.settings.training
    hyper = dict(training.hyperparameters)
    if stage == "sft":
        return None
    if stage == "dpo":
        if training.beta is not None:
            hyper["beta"] = training.beta
        return method_json("dpo", hyper)
    grader = getattr(data, "grader", None)
    if not grader:
        raise jobs.DistillError("distill: the reinforcement prompts have no grader")
    refused = openai_reward_refusal(grader)
    if refused and trainer_role(runtime).endpoint.kind == "openai":
        raise jobs.DistillError(f"distill: {refused}")
    return method_json("reinforcement", hyper, grader)


def _second_file(
    session: pytest.Session,
    runtime: Runtime,
    state: State,
    first: jobs.Outcome,
    progress: jobs.Progress,
) -> tuple[methods.TrainingFile, methods.Selection | None]:
    """The second stage's file: picked up again when a run before wrote it after this very
    first job (so a rerun neither samples anew nor starts a second job), else written now."""
    method = runtime.settings.training.method
    stage = _last_stage(method)
    known = state.stage(method, stage)
    kind = "reinforcement" if stage == "rl" else "dpo"
    if known.get("after") == first.job_id and known.get("training_file"):
        found = methods.read(runtime.settings.rootpath / str(known["training_file"]), kind)
        if found is not None and found.sha256 == known.get("sha256"):
            progress(f"distill: stage 2 ({stage}) trains on {known['training_file']} again")
            return found, None
    results = results_of(session.config).items
    max_tokens = runtime.settings.training.max_example_tokens
    suites = _suites(session, runtime)
    if stage == "rl":
        cases = {
            f"{s.suite.name}::{case.id}": methods.PromptCase(
                case.vars, case.reference, tuple(case.graders)
            )
            for s in suites
            for case in s.suite.cases
        }
        chosen = methods.select_prompts(results, cases, max_tokens=max_tokens)
        fix = "add train-split cases, or lower distill_holdout"
        return _write_method_file(runtime, chosen, progress, fix), chosen
    rejected = _sample_sft(runtime, suites, results, progress)
    chosen = methods.select_pairs(results, rejected, max_tokens=max_tokens)
    return _write_method_file(runtime, chosen, progress, _PAIRS_FIX_SFT_DPO), chosen


def _write_method_file(
    runtime: Runtime, chosen: methods.Selection, progress: jobs.Progress, fix: str
) -> methods.TrainingFile:
    settings = runtime.settings
    written = methods.write(chosen, paths.datasets(settings.rootpath), fix)
    where = os.path.relpath(written.path, settings.rootpath)
    noun = "preference pairs" if chosen.kind == "dpo" else "reinforcement prompts"
    progress(f"distill: wrote {len(written.lines)} {noun} to {where} ({chosen.explain()})")
    return written


def _sample_sft(
    runtime: Runtime,
    suites: list[CollectedSuite],
    results: Sequence[ItemResult],
    progress: jobs.Progress,
) -> dict[str, list[methods.Rejected]]:
    """sft+dpo: the SFT model's answers to each train-split case with a passing teacher answer
    (``distill_pair_samples`` each, at ``distill_pair_temperature``), graded by the case's
    graders; its failing answers, by ``suite::id``. The calls go through the client the items
    use, so cassettes record and replay them; a case's samples are sent one after another."""
    training = runtime.settings.training
    wanted = {
        f"{r.suite}::{r.case_id}"
        for r in methods.teacher_cases(results)
        if methods.passing_call(r) is not None
    }
    work = [
        (s, case)
        for s in suites
        for case in s.suite.cases
        if f"{s.suite.name}::{case.id}" in wanted
    ]
    client, role = runtime.client("sft"), runtime.role("sft")

    def sample(suite: CollectedSuite, case: EvalCase) -> list[methods.Rejected]:
        params = {
            **suite.suite.params_for("sft"),
            **suite.suite.tooling_for("sft", case).request(),
            "temperature": training.pair_temperature,
        }
        messages = suite.suite.messages_for(case, "sft")
        failed = []
        for number in range(1, training.pair_samples + 1):
            call = call_chat(client, role, messages, params=params)
            output = Sample(output_text=call.reply, output_tools=call.tool_calls)
            try:
                grades = [grade_any(g, output, case.items()) for g in suite.graders[case.id]]
            except Exception:  # a grader that cannot grade this sample: not a failure
                continue
            if not combine(grades)[1]:
                failed.append(methods.Rejected(call, f"sft sample {number}"))
        return failed

    progress(
        f"distill: sampling the SFT model {role.model} {training.pair_samples} times on each of "
        f"{len(work)} train-split cases (temperature {training.pair_temperature:g})"
    )
    workers = max(1, min(runtime.settings.concurrency, len(work)))
    try:
        with ThreadPoolExecutor(workers) as pool:
            answers = list(pool.map(lambda pair: sample(*pair), work))
    except Exception as exc:
        raise jobs.DistillError(
            f"distill: sampling the SFT model {role.model} failed: {describe_error(exc)}"
        ) from None
    found = {
        f"{s.suite.name}::{case.id}": failed
        for (s, case), failed in zip(work, answers, strict=True)
    }
    failing = sum(len(f) for f in found.values())
    progress(
        f"distill: {failing} of {len(work) * training.pair_samples} samples failed, on "
        f"{sum(1 for f in found.values() if f)} of {len(work)} cases"
    )
    return {case: failed for case, failed in found.items() if failed}


def _finish(
    runtime: Runtime,
    state: State,
    data: dataset.Dataset | methods.TrainingFile,
    selection: dataset.Selection | methods.Selection | None,
    outcome: jobs.Outcome,
    progress: jobs.Progress,
    *,
    first: tuple[dataset.Dataset, dataset.Selection, jobs.Outcome] | None = None,
) -> str | None:
    """The manifests and the report's lineage of every stage; the model to evaluate, or None
    when the last stage's job is not done (the gate waits)."""
    student = runtime.role("student")
    trainer = trainer_role(runtime)
    method = runtime.settings.training.method
    stages: list[dict[str, Any]] = []
    if first is not None:
        data1, selection1, outcome1 = first
        _update_manifest(data1, student.model, trainer, outcome1)
        stages.append(_stage_lineage(runtime, "sft", student.model, data1, selection1, outcome1))
        base = outcome1.model
    else:
        base = student.model
    _update_manifest(data, base, trainer, outcome)
    stages.append(_stage_lineage(runtime, _last_stage(method), base, data, selection, outcome))
    runtime.training = {
        "base_model": student.model,
        "trainer": str(trainer.endpoint),
        **stages[-1]["lineage"],
        "hyperparameters": dict(runtime.settings.training.hyperparameters),
        "method": method,
    }
    if len(stages) > 1 or method != "sft":
        runtime.training["stages"] = [
            {"stage": s["stage"], "base_model": s["base_model"], **s["lineage"]} for s in stages
        ]
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


def _update_manifest(
    data: dataset.Dataset | methods.TrainingFile,
    base_model: str | None,
    trainer: RoleConfig,
    outcome: jobs.Outcome,
) -> None:
    training = {
        "base_model": base_model,
        "trainer": str(trainer.endpoint),
        "file_id": outcome.file_id,
        "job_id": outcome.job_id,
        "status": outcome.status,
        "fine_tuned_model": outcome.model,
    }
    if isinstance(data, methods.TrainingFile):
        methods.update_manifest(data, training)
    else:
        dataset.update_manifest(data, training)


def _stage_lineage(
    runtime: Runtime,
    stage: str,
    base_model: str | None,
    data: dataset.Dataset | methods.TrainingFile,
    selection: dataset.Selection | methods.Selection | None,
    outcome: jobs.Outcome,
) -> dict[str, Any]:
    return {
        "stage": stage,
        "base_model": base_model,
        "lineage": _lineage(runtime.settings.rootpath, data, selection, outcome),
    }


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
    root: Path,
    data: dataset.Dataset | methods.TrainingFile,
    selection: dataset.Selection | methods.Selection | None,
    outcome: jobs.Outcome,
) -> dict[str, Any]:
    """What the report shows of a stage: data, file, job, model and loss curve."""
    lines = len(data.examples) if isinstance(data, dataset.Dataset) else len(data.lines)
    return {
        "dataset": _relative(data.path, root),
        "manifest": _relative(data.manifest_path, root),
        "sha256": data.sha256,
        "examples": lines,
        "selection": selection.explain() if selection is not None else "picked up again",
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
    """The fine-tuned model on the holdout; after a two-stage method, the first stage's model
    too, as role ``sft``, so the paired table shows what the second stage added."""
    trainer = trainer_role(runtime)
    runtime.use_finetuned(model, trainer.endpoint, trainer.api_key_env)
    labels = ("sft", "finetuned") if "sft" in runtime.settings.role_configs else ("finetuned",)
    on_controller = xdist.is_controller(session.config)
    suites = _suites(session, runtime)
    chosen = _chosen_cases(session, on_controller)
    holdout = runtime.settings.holdout
    cases: list[tuple[CollectedSuite, EvalCase, str]] = []
    for s in suites:
        for case in s.suite.cases:
            split = split_of(f"{s.suite.name}::{case.id}", holdout)
            if (s.file.nodeid, case.id) in chosen and (split == "holdout" or holdout == 0):
                cases.append((s, case, split))
    items: list[pytest.Item] = [
        DistillItem.from_parent(
            s.file,
            name=f"{case.id}[{label}]",
            suite=s.suite,
            case=case,
            role=label,
            split=split,
            graders=s.graders[case.id],
        )
        for label in labels
        for s, case, split in cases
    ]
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


def _suites(session: pytest.Session, runtime: Runtime) -> list[CollectedSuite]:
    """The eval files collected (on an xdist controller, read again from the workers' results)."""
    on_controller = xdist.is_controller(session.config)
    return collected(session.config) or (
        _collect_on_controller(session, runtime) if on_controller else []
    )


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
