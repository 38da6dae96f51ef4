"""How long a replay takes to report cases whose recordings are missing.

Writes a project with one suite of N cases, a teacher and a student and no cassettes, and runs
``pytest --distill-record-mode=none`` on it in a subprocess: every item is a cassette miss.
Each miss must report as one line, without a traceback built for it; the figure to watch is
the seconds per miss.

    python benchmarks/bench_misses.py [--cases 150]    # 2 roles: 300 misses
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_project(root: Path, cases: int) -> None:
    (root / "pytest.ini").write_text(
        "[pytest]\n"
        "distill_teacher_model = big\n"
        "distill_teacher_endpoint = http://127.0.0.1:9/v1\n"
        "distill_student_model = small\n"
        "distill_student_endpoint = http://127.0.0.1:9/v1\n"
        "distill_gate = teacher >= student\n"
    )
    lines = [
        "name: misses",
        "prompt:",
        '  user: "Say {{ n }}"',
        "cases:",
        *(f"  - {{id: c-{n:04d}, vars: {{n: {n}}}, reference: '{n}'}}" for n in range(cases)),
    ]
    (root / "misses.eval.yaml").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=150)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_project(root, args.cases)
        command = [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "--distill-record-mode=none", "--tb=short",
        ]  # fmt: skip
        start = time.perf_counter()
        run = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        # The same project with nothing to run: pytest's and the plugin's start-up alone.
        start = time.perf_counter()
        subprocess.run([*command, "--co"], cwd=root, capture_output=True, check=False)
        startup = time.perf_counter() - start
    misses = 2 * args.cases
    tracebacks = run.stdout.count("Traceback") + run.stdout.count(".py:")
    print(f"{misses} misses: {seconds:.2f} s in all, {startup:.2f} s of it start-up and collection")
    print(f"per miss: {(seconds - startup) / misses * 1000:.1f} ms; exit code {run.returncode}")
    print(f"traceback lines in the output: {tracebacks}")
    print(run.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
