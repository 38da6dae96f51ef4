"""Replay time as the number of items grows: pytest-distill's cassettes next to vcrpy's own.

Each item is one chat completion (a distinct prompt), replayed through the OpenAI SDK over
httpx2 with nothing listening. pytest-distill keeps one JSON cassette per item and finds a
request through a dict index; vcrpy, given one cassette with every interaction and body
matching, compares each request with the recorded ones in turn (quadratic overall).

    python benchmarks/bench_replay.py [--items 100 200 400 800] [--vcrpy-up-to 400]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import openai
import vcr

from pytest_distill.cassettes import files as cassettes
from pytest_distill.cassettes import recorder as recording

BASE = "http://local.invalid/v1"


def interaction(n: int) -> dict[str, Any]:
    body = {
        "model": "student",
        "messages": [
            {"role": "system", "content": "Reply with the code."},
            {"role": "user", "content": f"Which code goes with item {n}?"},
        ],
        "temperature": 0,
    }
    reply = {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "created": 0,
        "model": "student",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": f"CODE-{n}"},
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14},
    }
    return {
        "request": {
            "method": "POST",
            "uri": f"{BASE}/chat/completions",
            "headers": {"content-type": ["application/json"]},
            "body": {"json": body},
        },
        "response": {
            "status": {"code": 200, "message": "OK"},
            "headers": {"content-type": ["application/json"]},
            "body": {"json": reply},
        },
    }


def ask(client: openai.OpenAI, n: int) -> str:
    body = interaction(n)["request"]["body"]["json"]
    reply = client.chat.completions.create(**body)
    return reply.choices[0].message.content or ""


def distill_replay(root: Path, items: int) -> float:
    for n in range(items):
        cassettes.dump(root / f"suite.eval.yaml/i{n}[student].json", [interaction(n)], {})
    recorder = recording.Recorder(recording.SessionCassette(root, "none", root))
    client = openai.OpenAI(base_url=BASE, api_key="x", max_retries=0)
    recorder.start()
    try:
        started = time.perf_counter()
        for n in range(items):
            with recording.route(recording.item_route(f"suite.eval.yaml::i{n}[student]")):
                assert ask(client, n) == f"CODE-{n}"
        return time.perf_counter() - started
    finally:
        recorder.stop()
        client.close()


def vcrpy_replay(root: Path, items: int) -> float:
    """vcrpy's own cassette format and matching: one file, every request compared in turn."""
    path = root / "vcrpy.json"
    recorded = []
    for n in range(items):
        data = interaction(n)
        request, response = data["request"], data["response"]
        recorded.append(
            {
                "request": {
                    "method": "POST",
                    "uri": request["uri"],
                    "headers": {"content-type": ["application/json"]},
                    "body": json.dumps(request["body"]["json"]),
                },
                "response": {
                    "status": response["status"],
                    "headers": response["headers"],
                    "body": {"string": json.dumps(response["body"]["json"])},
                },
            }
        )
    path.write_text(json.dumps({"version": 1, "interactions": recorded}))
    client = openai.OpenAI(base_url=BASE, api_key="x", max_retries=0)
    tape = vcr.VCR(serializer="json", record_mode="none", match_on=["method", "path", "body"])
    try:
        started = time.perf_counter()
        with tape.use_cassette(str(path)):
            for n in range(items):
                assert ask(client, n) == f"CODE-{n}"
        return time.perf_counter() - started
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100, 200, 400, 800])
    parser.add_argument(
        "--vcrpy-up-to",
        type=int,
        default=400,
        help="time vcrpy's own matching up to this many items (quadratic: 800 take minutes)",
    )
    args = parser.parse_args()
    print(f"{'items':>6} {'pytest-distill s':>17} {'ms/item':>8} {'vcrpy s':>9} {'ms/item':>8}")
    for items in args.items:
        with tempfile.TemporaryDirectory() as tmp:
            ours = distill_replay(Path(tmp) / "ours", items)
            theirs = vcrpy_replay(Path(tmp), items) if items <= args.vcrpy_up_to else None
        line = f"{items:>6} {ours:>17.3f} {1000 * ours / items:>8.2f}"
        if theirs is not None:
            line += f" {theirs:>9.3f} {1000 * theirs / items:>8.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
