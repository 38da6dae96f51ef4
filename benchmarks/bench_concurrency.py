"""Concurrent prefetch of data-file cases against a slow loopback endpoint.

Runs 200 eval cases (one role) against an OpenAI-compatible server on 127.0.0.1 that answers
every chat completion after 200 ms, with ``--distill-concurrency 16``, and prints the wall time
of the pytest session next to the ideal 200 x 0.2 / 16 = 2.5 s.

    python benchmarks/bench_concurrency.py [--cases 200] [--delay 0.2] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from scripted_server import ScriptedServer


def write_project(root: Path, cases: int, base_url: str) -> None:
    lines = [
        "name: bench",
        "prompt:",
        '  user: "Echo {{ n }}"',
        "graders:",
        "  - {type: string_check, operation: eq}",
        "cases:",
    ]
    lines += [
        f"  - {{id: c{i:04d}, vars: {{n: {i}}}, reference: 'Echo {i}'}}" for i in range(cases)
    ]
    (root / "bench.eval.yaml").write_text("\n".join(lines) + "\n")
    (root / "pytest.ini").write_text(
        f"[pytest]\ndistill_teacher_model = echo\ndistill_teacher_endpoint = {base_url}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    def echo(model: str, messages: list[dict[str, str]]) -> str:
        return messages[-1]["content"]

    with ScriptedServer(echo, delay=args.delay) as server, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_project(root, args.cases, server.base_url)
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--distill-concurrency={args.concurrency}",
            str(root),
        ]
        started = time.perf_counter()
        run = subprocess.run(command, capture_output=True, text=True, cwd=root)
        wall = time.perf_counter() - started
        spans = sorted(server.chat_spans)
    if run.returncode != 0 or len(spans) != args.cases:
        sys.exit(f"benchmark run failed:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
    ideal = args.cases * args.delay / args.concurrency
    calls = spans[-1][1] - spans[0][0]
    print(f"cases={args.cases} delay={args.delay}s concurrency={args.concurrency}")
    print(f"ideal (cases x delay / concurrency):   {ideal:.2f} s")
    print(
        f"model-call phase (first request to last answer, seen by the server): "
        f"{calls:.2f} s = {calls / ideal:.2f}x ideal (target <= 1.25x)"
    )
    print(f"whole pytest session incl. interpreter start, imports, collection: {wall:.2f} s")
    print(run.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
