"""Time to first byte of the dashboard's stored-completions page with 100,000 completions stored.

Fills a fresh data directory with 100,000 stored chat completions (two models, a ``task``
metadata key with 10 values, one rare value), starts ``distill-server``'s server on it and
times ``GET /completions`` unfiltered and filtered: the median and p95 of 20 requests each,
from sending the request to the first byte of the answer. Target: under 300 ms.

    python benchmarks/bench_dashboard.py
"""

from __future__ import annotations

import http.client
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

N = 100_000
REPEATS = 20


def fill(data_dir: Path) -> None:
    from distill_server.store import Store

    Store(data_dir / "state.sqlite3").close()  # the schema and its indexes
    rows = []
    for i in range(N):
        task = "rare" if i % 10_000 == 7 else f"task-{i % 10}"
        body = {
            "id": f"chatcmpl-{i:08d}",
            "object": "chat.completion",
            "created": 1_790_000_000 + i,
            "model": "big" if i % 2 else "small",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f"reply {i}"}}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
            "metadata": {"task": task, "run": f"r{i % 100}"},
        }
        messages = [
            {"role": "system", "content": "You normalise dates to ISO 8601."},
            {"role": "user", "content": f"Ticket {i}: needed by the {i % 28 + 1}th of March"},
        ]
        rows.append(
            ("completion", body["id"], json.dumps(body), json.dumps({"messages": messages}))
        )
    with sqlite3.connect(data_dir / "state.sqlite3") as conn:
        conn.executemany(
            "INSERT INTO objects (kind, id, parent, body, extra) VALUES (?, ?, NULL, ?, ?)", rows
        )


def ttfb(url: str, path: str) -> float:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    start = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    first = time.perf_counter() - start
    response.read()
    assert response.status == 200, (path, response.status)
    conn.close()
    return first * 1000


def main() -> None:
    from distill_server import LocalServer

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        started = time.perf_counter()
        fill(data_dir)
        print(f"stored {N} completions in {time.perf_counter() - started:.1f} s")
        with LocalServer(data_dir) as server:
            root = server.base_url.removesuffix("/v1")
            ttfb(root, "/completions")  # warm: templates compiled, SQLite pages cached
            cases = {
                "unfiltered, newest page": "/completions",
                "model=big": "/completions?model=big",
                "metadata task=task-3 (1 in 10)": "/completions?key=task&value=task-3",
                "metadata task=rare (10 of 100,000)": "/completions?key=task&value=rare",
                "text '17th of March' (1 in 28)": "/completions?text=17th+of+March",
                "text 'reply 99999' (1 of 100,000)": "/completions?text=reply+99999",
                "page 1,000 (cursor)": "/completions?before=50000",
            }
            print(f"{'page':40} {'median ms':>10} {'p95 ms':>8}")
            for label, path in cases.items():
                times = sorted(ttfb(root, path) for _ in range(REPEATS))
                p95 = times[int(0.95 * (len(times) - 1))]
                print(f"{label:40} {statistics.median(times):10.1f} {p95:8.1f}")
    print(f"load average: {os.getloadavg()[0]:.2f} (2 cores); python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
