"""``distill-server export``: a fine-tuned model as files that other engines serve.

- ``peft``: the adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) that
  vLLM (``--enable-lora --lora-modules``), SGLang (``--lora-paths``) and
  ``PeftModel.from_pretrained`` load;
- ``merged``: the base with the adapter merged in (``merge_and_unload``), saved with its
  tokenizer as a model directory any engine loads;
- ``ollama``: the adapter in ``adapter/`` and a ``Modelfile`` (``FROM <base>``, ``ADAPTER``).

The commands printed serve tool calls as this server does: vLLM with
``--enable-auto-tool-choice --tool-call-parser hermes``, SGLang with ``--tool-call-parser
qwen25`` (both read the ``<tool_call>`` blocks of ``weights/chat_format.py``). When the base's
own chat template does not render tools (SmolLM2's), the export also writes
``tool_chat_template.jinja``, the base's template with the server's tools format before it, and
the commands pass it with ``--chat-template``: the student sees the prompts it was trained on.

It reads the server's data directory (the SQLite registry and the adapters) and needs no
running server. Everything is written into a temporary folder beside the target, then renamed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from distill_server.architectures import OLLAMA_ADAPTER_FAMILIES
from distill_server.models import DEFAULT_MODEL_ID, ModelSource, default_gguf, located
from distill_server.store import Store

Format = Literal["peft", "merged", "ollama"]
FORMATS: tuple[Format, ...] = ("peft", "merged", "ollama")
VLLM_DEFAULT_MAX_RANK = 16
_VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values --max-lora-rank accepts
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TOOL_TEMPLATE = "tool_chat_template.jinja"


class ExportError(RuntimeError):
    """The export cannot be made; the message is one line saying why and what to do."""


@dataclass(frozen=True, slots=True)
class FineTuned:
    """A fine-tuned model of the registry: its adapter and the base it was trained on."""

    id: str
    adapter: Path
    base: ModelSource


@dataclass(frozen=True, slots=True)
class Exported:
    format: Format
    path: Path
    rank: int
    commands: tuple[str, ...]
    """How to serve it, one shell command per line."""
    notes: tuple[str, ...] = ()


def find(data_dir: Path, model_id: str, models: Mapping[str, str] | None = None) -> FineTuned:
    """Look ``model_id`` up in the registry under ``data_dir``; ``models`` (``ID=PATH`` as the
    server was started with) names bases that models made before the path was kept lack."""
    database = data_dir / "state.sqlite3"
    if not database.is_file():
        raise ExportError(
            f"{str(data_dir)!r} holds no server state (no state.sqlite3); pass the directory the "
            "server ran with, e.g. --data-dir .distill/server"
        )
    store = Store(database)
    try:
        record = store.get("model", model_id)
        known = [r.id for r in store.list("model")]
    finally:
        store.close()
    if record is None:
        listed = ", ".join(known) or "none yet"
        raise ExportError(
            f"no fine-tuned model {model_id!r} in {data_dir}; fine-tuned models there: {listed}"
        )
    base_id = record.extra["base"]
    path = record.extra.get("base_path") or (models or {}).get(base_id)
    if path is None and base_id == DEFAULT_MODEL_ID:
        path = str(default_gguf())
    if path is None or not Path(path).exists():
        raise ExportError(
            f"the base {base_id!r} of {model_id!r} is not found ({path!r}); name it with "
            f"--model {base_id}=PATH"
        )
    base = ModelSource(base_id, Path(path), cache=data_dir / "converted", device="cpu")
    return FineTuned(model_id, located(data_dir, record.extra["adapter"]), base)


def export(model: FineTuned, target: Path, fmt: Format, name: str | None = None) -> Exported:
    """Write ``model`` to ``target`` (which must not exist, or be empty) in format ``fmt``."""
    config = adapter_config(model.adapter)
    name = name or serving_name(model.id)
    with _staged(target) as staging:
        if fmt == "merged":
            _write_merged(model, staging)
            tools = _tools_flags(model, staging, target)
            return Exported(fmt, target, config["r"], _merged_commands(target, name, tools))
        adapter_dir = staging / "adapter" if fmt == "ollama" else staging
        _write_adapter(model.adapter, config, adapter_dir)
        if fmt == "ollama":
            return _write_ollama(model, config, staging, target, name)
        tools = _tools_flags(model, staging, target)
        return Exported(fmt, target, config["r"], _peft_commands(config, target, name, tools))


def adapter_config(adapter: Path) -> dict[str, Any]:
    """The adapter's ``adapter_config.json``, checked against what vLLM and SGLang load."""
    for file in _ADAPTER_FILES:
        if not (adapter / file).is_file():
            raise ExportError(f"the adapter {str(adapter)!r} has no {file}; train the model again")
    config: dict[str, Any] = json.loads((adapter / "adapter_config.json").read_text())
    if config.get("use_dora"):
        raise ExportError(f"{adapter}: a DoRA adapter, which vLLM refuses; train a plain LoRA")
    if config.get("modules_to_save"):
        raise ExportError(
            f"{adapter}: modules_to_save {config['modules_to_save']!r}, which vLLM refuses"
        )
    return config


def vllm_max_rank(rank: int) -> int | None:
    """The ``--max-lora-rank`` vLLM needs for ``rank``; None when its default (16) serves."""
    if rank <= VLLM_DEFAULT_MAX_RANK:
        return None
    return next((r for r in _VLLM_RANKS if r >= rank), rank)


def serving_name(model_id: str) -> str:
    """A name engines accept for the adapter: ``ft:base:local:distill:1a2b3c4d`` ->
    ``distill-1a2b3c4d``."""
    parts = [p for p in model_id.split(":")[-2:] if p]
    return re.sub(r"[^a-z0-9._-]+", "-", "-".join(parts).lower()).strip("-") or "student"


@contextmanager
def _staged(target: Path) -> Iterator[Path]:
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ExportError(f"{str(target)!r} exists and is not empty; remove it or pick another")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _new_folder_beside(target)
    try:
        yield staging
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _new_folder_beside(target: Path) -> Path:
    """A new folder ``.NAME.XXXXXXXX`` beside ``target`` with the mode of any new folder (0777
    less the umask), not ``mkdtemp``'s owner-only one: the export is the user's to share."""
    while True:
        staging = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
        try:
            staging.mkdir()
            return staging
        except FileExistsError:  # pragma: no cover - a name already taken: draw another
            continue


def _write_adapter(adapter: Path, config: Mapping[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(adapter / "adapter_model.safetensors", out / "adapter_model.safetensors")
    cleaned = {**config, "use_dora": False, "modules_to_save": None}
    (out / "adapter_config.json").write_text(json.dumps(cleaned, indent=2, sort_keys=True) + "\n")


def _write_merged(model: FineTuned, out: Path) -> None:
    from distill_server.weights.merging import merge

    merge(model.base, model.adapter, out)


def _write_ollama(
    model: FineTuned, config: Mapping[str, Any], staging: Path, target: Path, name: str
) -> Exported:
    # Ollama imports a GGUF file or a safetensors directory; the default SmolLM2 was trained
    # on its GGUF's weights, so that file is the base.
    base = model.base.path.resolve()
    (staging / "Modelfile").write_text(f"FROM {base}\nADAPTER ./adapter\n")
    family = _base_family(config)
    notes: tuple[str, ...] = ()
    if family not in OLLAMA_ADAPTER_FAMILIES:
        notes = (
            f"Ollama imports safetensors adapters for Llama, Mistral and Gemma models; this "
            f"base is {family!r}, so use --format merged (then `ollama create` from it) if "
            "`ollama create` refuses the adapter.",
        )
    notes += (
        "Tool calls: the Modelfile keeps the base's own template. To serve tool calls from "
        "Ollama, give it a TEMPLATE that writes tools and calls as <tool_call> blocks, as "
        "--format peft's tool_chat_template.jinja does, or serve that export with vLLM or "
        "SGLang (their commands name the tool-call parser).",
    )
    commands = (f"ollama create {name} -f {target / 'Modelfile'}", f"ollama run {name}")
    return Exported("ollama", target, config["r"], commands, notes)


def _base_family(config: Mapping[str, Any]) -> str:
    base_dir = Path(str(config.get("base_model_name_or_path") or ""))
    try:
        return str(json.loads((base_dir / "config.json").read_text()).get("model_type", "unknown"))
    except (OSError, ValueError):
        return "unknown"


@dataclass(frozen=True, slots=True)
class _ToolFlags:
    vllm: str
    sglang: str


def _tools_flags(model: FineTuned, staging: Path, target: Path) -> _ToolFlags:
    """The flags that serve tool calls in the server's format; writes the chat template that
    renders tools when the base's own does not."""
    from distill_server.weights.chat_format import template_renders_tools, tool_template
    from distill_server.weights.loading import load_tokenizer

    tokenizer = load_tokenizer(model.base)
    template = ""
    if tokenizer.chat_template and not template_renders_tools(tokenizer):
        (staging / TOOL_TEMPLATE).write_text(tool_template(str(tokenizer.chat_template)))
        template = f" --chat-template {target / TOOL_TEMPLATE}"
    return _ToolFlags(
        f" --enable-auto-tool-choice --tool-call-parser hermes{template}",
        f" --tool-call-parser qwen25{template}",
    )


def _peft_commands(
    config: Mapping[str, Any], target: Path, name: str, tools: _ToolFlags
) -> tuple[str, ...]:
    base = config.get("base_model_name_or_path") or "BASE"
    rank = vllm_max_rank(int(config["r"]))
    extra = f" --max-lora-rank {rank}" if rank else ""
    return (
        f"vllm serve {base} --enable-lora --lora-modules {name}={target}{extra}{tools.vllm}",
        f"python -m sglang.launch_server --model-path {base} --enable-lora "
        f"--lora-paths {name}={target}"
        + (f" --max-lora-rank {config['r']}" if rank else "")
        + tools.sglang,
    )


def _merged_commands(target: Path, name: str, tools: _ToolFlags) -> tuple[str, ...]:
    return (
        f"vllm serve {target} --served-model-name {name}{tools.vllm}",
        f"python -m sglang.launch_server --model-path {target} --served-model-name {name}"
        + tools.sglang,
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="distill-server export",
        description="Write a model fine-tuned by the embedded server as files other engines "
        "serve: a PEFT adapter (vLLM, SGLang, PeftModel), a merged model directory, or an "
        "Ollama Modelfile with its adapter. Reads DATA_DIR; no server needs to run.",
        epilog="example: distill-server export ft:SmolLM2-135M-Instruct:local:distill:1a2b3c4d "
        "--to ./student --format peft",
    )
    p.add_argument("model_id", metavar="MODEL_ID", help="the fine-tuned model's id (ft:...)")
    p.add_argument("--to", required=True, type=Path, metavar="DIR", help="folder to write")
    p.add_argument("--format", choices=FORMATS, default="peft", help="default: %(default)s")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".distill/server"),
        help="the server's data directory (default: %(default)s)",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="ID=PATH",
        help="the base's path, as given to the server, for models trained before it was kept",
    )
    p.add_argument("--name", help="the name engines serve it under (default: from MODEL_ID)")
    return p


def main(argv: Sequence[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    models = {}
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            p.error(f"--model {spec!r}: expected ID=PATH, e.g. --model student=./models/student")
        models[name] = path
    try:
        model = find(args.data_dir, args.model_id, models)
        done = export(model, args.to.resolve(), args.format, args.name)
    except ExportError as exc:
        print(f"distill-server export: {exc}", file=sys.stderr)
        return 2
    print(f"distill-server export: wrote {done.format} to {done.path} (LoRA rank {done.rank})")
    rank = vllm_max_rank(done.rank)
    if rank and done.format != "merged":
        print(f"rank {done.rank} is over vLLM's default --max-lora-rank 16: serve it with {rank}")
    for note in done.notes:
        print(f"note: {note}")
    print("serve it with:")
    for command in done.commands:
        print(f"  {command}")
    return 0
