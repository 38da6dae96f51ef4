"""A live `pytest --distill` on the real SmolLM2 student, recorded, then replayed offline.

The teacher is a scripted OpenAI-compatible server on loopback (it answers every case right
but every seventh); the student is SmolLM2-135M-Instruct on the embedded server, which also
fine-tunes it with LoRA. The live run records cassettes (`--distill-record-mode=all`); then
`.distill/` is deleted and the same command replays in mode `none`, with no server and no
model. Prints both wall times, and whether outcomes, training file and gate verdict agree.

    python benchmarks/bench_record_replay.py [--cases 40] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from scripted_server import ScriptedServer

ANSWER = "ZEBRA-7"


def teacher(model: str, messages: list[dict[str, Any]]) -> str:
    item = int(messages[-1]["content"].rsplit(" ", 1)[1].rstrip("?"))
    return "zebra?" if item % 7 == 3 else ANSWER


def write_project(root: Path, cases: int, epochs: int, teacher_url: str) -> None:
    lines = [
        "name: codes",
        "prompt:",
        "  system: Reply with the code.",
        '  user: "Which code goes with item {{ n }}?"',
        "params: {temperature: 0, max_tokens: 8}",
        "graders:",
        "  - {type: string_check, operation: eq}",
        "cases:",
    ]
    lines += [f"  - {{id: i{n:03d}, vars: {{n: {n}}}, reference: {ANSWER}}}" for n in range(cases)]
    (root / "codes.eval.yaml").write_text("\n".join(lines) + "\n")
    (root / "pytest.ini").write_text(
        "[pytest]\n"
        "distill_teacher_model = big\n"
        f"distill_teacher_endpoint = {teacher_url}\n"
        "distill_student_model = SmolLM2-135M-Instruct\n"
        "distill_student_endpoint = local\n"
        f"distill_n_epochs = {epochs}\n"
        "distill_batch_size = 4\n"
        "distill_learning_rate_multiplier = 2\n"
        "distill_concurrency = 16\n"
        "distill_poll_interval = 1\n"
        "distill_gate = finetuned >= student + 0.5\n"
    )


def run(root: Path, mode: str) -> tuple[float, subprocess.CompletedProcess[str], dict[str, Any]]:
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--distill",
        f"--distill-record-mode={mode}",
        "--distill-report=report.json",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=root, capture_output=True, text=True)
    wall = time.perf_counter() - started
    report = json.loads((root / "report.json").read_text())
    return wall, done, report


def outcomes(report: dict[str, Any]) -> list[tuple[str, bool, float]]:
    return sorted((i["nodeid"], i["passed"], i["score"]) for i in report["items"])


def training_file(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.glob(".distill/datasets/*/train.jsonl")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with ScriptedServer(teacher) as server:
            write_project(root, args.cases, args.epochs, server.base_url)
            live_wall, live, live_report = run(root, "all")
        live_data = training_file(root)
        # Offline now: the teacher is gone and nothing local may start. Only cassettes remain.
        shutil.rmtree(root / ".distill")
        replay_wall, replay, replay_report = run(root, "none")
        replay_data = training_file(root)
        cassettes = sum(1 for _ in (root / "cassettes").rglob("*.json"))
    print(f"cases={args.cases} epochs={args.epochs} cassette files={cassettes}")
    print(f"live run (recording):  {live_wall:7.1f} s  exit {live.returncode}")
    print(f"replay (mode none):    {replay_wall:7.1f} s  exit {replay.returncode}")
    print(f"replay / live:         {replay_wall / live_wall:7.1%}")
    print(f"same item outcomes:    {outcomes(live_report) == outcomes(replay_report)}")
    print(f"same training JSONL:   {live_data == replay_data and bool(live_data)}")
    print(f"same gate verdict:     {live_report['gate'] == replay_report['gate']}")
    print("live:   " + live.stdout.strip().splitlines()[-1])
    print("replay: " + replay.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
