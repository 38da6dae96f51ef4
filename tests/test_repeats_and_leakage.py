"""Repeats (``--distill-repeats``), the paired summary, and the gate's leakage exclusion, on
real loopback servers."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CAPITALS, SUITE
from scripted_server import ScriptedServer


class TwoOfThree:
    """Answers each question right on its 1st and 2nd asking, wrong on the 3rd, and so on."""

    def __init__(self) -> None:
        self.asked: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def __call__(self, model: str, messages: list[dict[str, Any]]) -> str:
        question = messages[-1]["content"]
        with self._lock:
            self.asked[(model, question)] += 1
            turn = self.asked[(model, question)]
        return CAPITALS[question] if turn % 3 else f"not {CAPITALS[question]} ({turn})"


@pytest.fixture
def flaky() -> Iterator[ScriptedServer]:
    with ScriptedServer(TwoOfThree()) as srv:
        yield srv


@pytest.fixture
def flaky_project(pytester: pytest.Pytester, flaky: ScriptedServer) -> pytest.Pytester:
    pytester.makeini(
        f"""
        [pytest]
        distill_teacher_model = big
        distill_teacher_endpoint = {flaky.base_url}
        distill_holdout = 0
        """
    )
    pytester.makefile(".eval.yaml", capitals=SUITE)
    return pytester


def _report(pytester: pytest.Pytester) -> dict[str, Any]:
    return json.loads((pytester.path / "report.json").read_text())


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_repeats_give_pass_k_and_pass_at_k_on_an_endpoint_right_two_times_in_three(
    flaky_project: pytest.Pytester, flaky: ScriptedServer, xdist: list[str]
) -> None:
    if xdist:
        pytest.importorskip("xdist")
    result = flaky_project.runpytest(
        *xdist,
        "--distill-repeats=3",
        "--distill-report=report.json",
        "--distill-gate",
        "teacher.pass_at_k >= 1 and teacher.pass_k < 0.5 and teacher.pass_rate > 0.6",
    )
    assert len(flaky.chat_requests()) == 15  # 5 cases x 3 repeats, each its own call
    result.stdout.fnmatch_lines(
        [
            "repeats: 3 per case; pass^3 / pass@3 of cases: teacher 0.000 / 1.000",
            "*ok   teacher.pass_at_k >= 1: 1.000 >= 1 -> True",
            "*ok   teacher.pass_k < 0.5: 0.000 < 0.5 -> True",
            "*ok   teacher.pass_rate > 0.6: 0.667 > 0.6 -> True",
            "gate passed*",
        ]
    )
    assert result.ret == 0
    report = _report(flaky_project)
    items = report["items"]
    assert len(items) == 5  # one item per case and role
    assert {i["nodeid"].rsplit("::", 1)[1] for i in items} == {
        f"{c}[teacher]" for c in ("fr", "it", "es", "jp", "pe")
    }
    assert all(i["score"] == pytest.approx(2 / 3) and i["passed"] is False for i in items)
    assert [len(i["attempts"]) for i in items] == [3] * 5
    # each question's three askings: right, right, wrong (whichever worker asked them)
    assert all([a["passed"] for a in i["attempts"]] == [True, True, False] for i in items)
    assert report["paired"]["repeats"] == 3


def test_repeats_are_recorded_and_replayed_each_with_its_own_answer(
    flaky_project: pytest.Pytester, flaky: ScriptedServer
) -> None:
    record = flaky_project.runpytest(
        "--distill-repeats=3",
        "--distill-record-mode=all",
        "--distill-report=report.json",
        "-k",
        "fr",
    )
    record.assert_outcomes(failed=1)
    recorded = [a["reply"] for a in _report(flaky_project)["items"][0]["attempts"]]
    assert recorded == ["Paris", "Paris", "not Paris (3)"]
    cassette = json.loads(
        (flaky_project.path / "cassettes" / "capitals.eval.yaml" / "fr[teacher].json").read_text()
    )
    assert len([i for i in cassette["interactions"] if i["request"]["method"] == "POST"]) == 3

    asked = len(flaky.chat_requests())
    replay = flaky_project.runpytest(
        "--distill-repeats=3",
        "--distill-record-mode=none",
        "--distill-report=report.json",
        "-k",
        "fr",
    )
    replay.assert_outcomes(failed=1)
    assert len(flaky.chat_requests()) == asked  # nothing went to the server
    replayed = [a["reply"] for a in _report(flaky_project)["items"][0]["attempts"]]
    assert replayed == recorded


def test_summary_prints_paired_differences_per_pair_and_per_suite(project: pytest.Pytester) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    project.makefile(".eval.yaml", more=SUITE.replace("name: capitals", "name: more"))
    result = project.runpytest(
        "--distill-holdout=0",
        "--distill-report=report.json",
        "--distill-gate",
        "noninferior(teacher, student, margin=0.05) and teacher[more].pass_rate >= 0.9",
    )
    # teacher right on all 10, student on 2 (France in each suite): 8 better, 0 worse
    result.stdout.fnmatch_lines(
        [
            "paired differences (95% CI, by case):",
            "  teacher - student: +0.800  95% CI [+0.498, +1.000]  n=10 paired  (8 better, 0 worse)  exact p=0.00781",
            "  student - teacher: -0.800  95% CI [-1.000, -0.498]  n=10 paired  (0 better, 8 worse)  exact p=0.00781",
            "  student?capitals? - teacher?capitals?: -0.800 *n=5 paired  (0 better, 4 worse)*",
            "  student?more? - teacher?more?: -0.800 *n=5 paired*",
            "  ok   noninferior(teacher, student, margin=0.05): teacher - student = +0.800, one-sided 95% lower bound +0.* > -0.050 (n=10 paired, 8 better, 0 worse) -> True",
            "  ok   teacher[more].pass_rate >= 0.9: 1.000 >= 0.9 -> True",
            "power: sd(d)=0.422, n=10: even a true gain of 0.082 fails noninferior(teacher, student, margin=0.05) 80% of the time; a model as good as student passes 7% of the time; too few cases for margin 0.05: about * holdout cases would make that 80%",
            "gate passed*",
        ]
    )
    report = _report(project)
    assert report["schema"] == "pytest-distill/report/2"
    pairs = {(p["a"], p["b"]): p for p in report["paired"]["pairs"]}
    assert pairs[("teacher", "student")]["mean_difference"] == pytest.approx(0.8)
    assert pairs[("student[more]", "teacher[more]")]["n"] == 5
    assert pairs[("student", "teacher")]["exact_p"] == pytest.approx(2 / 2**8)


SMALL = "ft:small:org:distill:abc123"


def _manifest(root: Path, cases: list[str], fingerprints: list[str]) -> None:
    folder = root / ".distill" / "datasets" / "0123456789ab"
    folder.mkdir(parents=True)
    lines = [
        {"line": n, "case": c, "case_sha256": f, "completion_id": None}
        for n, (c, f) in enumerate(zip(cases, fingerprints, strict=True), start=1)
    ]
    manifest = {"schema": "pytest-distill/manifest/1", "lines": lines}
    manifest["training"] = {"fine_tuned_model": SMALL, "status": "succeeded"}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_a_carried_over_models_training_cases_leave_the_gate(
    pytester: pytest.Pytester, server: ScriptedServer
) -> None:
    """A fine-tuned model from an earlier run, its manifest on disk, evaluated on every case
    (holdout 0): the two cases it trained on are counted and excluded, by id and content."""
    server.script(SMALL, CAPITALS)
    pytester.makeini(
        f"""
        [pytest]
        distill_teacher_model = big
        distill_teacher_endpoint = {server.base_url}
        distill_finetuned_model = {SMALL}
        distill_finetuned_endpoint = {server.base_url}
        distill_holdout = 0
        """
    )
    path = pytester.makefile(".eval.yaml", renamed=SUITE.replace("name: capitals", "name: moved"))
    from pytest_distill.evals.loaders import load_file

    cases = {c.id: c for c in load_file(path).cases}
    # "fr" is known by content only (its file and suite were renamed since); "it" by its id
    _manifest(pytester.path, ["capitals::fr", "moved::it"], [cases["fr"].fingerprint(), ""])
    result = pytester.runpytest(
        "--distill-report=report.json", "--distill-gate", "finetuned >= teacher"
    )
    result.stdout.fnmatch_lines(
        [f"2 cases of the holdout were in {SMALL}'s training set: excluded", "gate passed*"]
    )
    report = _report(pytester)
    assert report["paired"]["excluded"] == [{"model": SMALL, "cases": 2}]
    [pair] = [p for p in report["paired"]["pairs"] if (p["a"], p["b"]) == ("finetuned", "teacher")]
    assert pair["n"] == 3


def test_after_renaming_the_eval_file_the_gate_leaves_out_the_cases_the_model_trained_on(
    pytester: pytest.Pytester, tiny_model: Path
) -> None:
    """``--distill`` trains on the train split of ``codes``; the file and its suite are then
    renamed, so every case's split is drawn again: holdout cases the model trained on are
    found by their content and excluded from the plain run's gate."""
    from test_distill import CASES, _teacher, ini, suite

    from pytest_distill.evals.cases import split_of

    with ScriptedServer(_teacher) as teacher:
        pytester.makeini(ini(teacher.base_url, tiny_model))
        pytester.makefile(".eval.yaml", codes=suite())
        first = pytester.runpytest("--distill")
        first.stdout.fnmatch_lines(["distill: fine-tuned model ft:tiny:local:distill:*"])
        (pytester.path / "codes.eval.yaml").unlink()
        pytester.makefile(".eval.yaml", renamed=suite().replace("name: codes", "name: renamed"))
        second = pytester.runpytest(
            "--distill-report=report.json", "--distill-gate", "finetuned >= 0"
        )

    trained = {
        n for n in range(CASES) if split_of(f"codes::i{n:02d}", 0.2) == "train" and n % 7 != 3
    }
    held_out = {n for n in range(CASES) if split_of(f"renamed::i{n:02d}", 0.2) == "holdout"}
    leaked = trained & held_out
    assert leaked and held_out - leaked  # this seed's draw has both kinds of holdout case
    report = _report(pytester)
    [excluded] = report["paired"]["excluded"]
    assert excluded["model"].startswith("ft:tiny:local:distill:")
    assert excluded["cases"] == len(leaked)
    second.stdout.fnmatch_lines(
        [
            f"{len(leaked)} case* of the holdout * in ft:tiny:local:distill:*'s training set: excluded"
        ]
    )
    [pair] = [p for p in report["paired"]["pairs"] if (p["a"], p["b"]) == ("finetuned", "teacher")]
    assert pair["n"] == len(held_out - leaked)


def test_training_takes_every_passing_repeat_of_a_teacher_case_once() -> None:
    from pytest_distill.records import Attempt, ItemResult
    from pytest_distill.roles import CallRecord
    from pytest_distill.training.dataset import select

    def call(reply: str) -> CallRecord:
        prompt = ({"role": "user", "content": "Capital of France?"},)
        return CallRecord("teacher", "big", prompt, {}, reply, None, 3, 1, 0.1)

    replies = [("Paris", True), ("Paris.", True), ("Lyon", False), ("Paris", True)]
    attempts = tuple(Attempt(ok, float(ok), call(reply)) for reply, ok in replies)
    result = ItemResult(
        "c.eval.yaml::fr[teacher]", "c", "fr", "teacher", "train", False, 0.75,
        call=attempts[0].call, attempts=attempts, case_sha256="abc",
    )  # fmt: skip
    selection = select([result], max_tokens=1000)
    answers = [e.record["messages"][-1]["content"] for e in selection.examples]
    assert answers == ["Paris", "Paris."]  # the failing repeat is left out, the repeat deduplicated
    assert selection.passing == 1 and selection.duplicates == 1
    assert {e.case_sha256 for e in selection.examples} == {"abc"}
