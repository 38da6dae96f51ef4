"""The base model with a LoRA adapter merged into its weights, saved with its tokenizer.

Imports torch, transformers and peft when called; only ``export`` calls it.
"""

from __future__ import annotations

import json
from pathlib import Path

from distill_server import devices
from distill_server.models import ModelSource

_DTYPES = ("float32", "bfloat16", "float16")


def merge(base: ModelSource, adapter: Path, out: Path) -> None:
    """Load ``base`` on the CPU in the dtype its config declares, merge ``adapter`` and save.

    The CPU needs the base's weights in that dtype once in memory (2 bytes a parameter for a
    bfloat16 model, 4 for float32).
    """
    from peft import PeftModel

    from distill_server.weights.loading import load_pretrained, quiet_peft

    placement = devices.Placement("cpu", _declared_dtype(adapter))
    tokenizer, model = load_pretrained(base, placement)
    with quiet_peft(model):
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _declared_dtype(adapter: Path) -> str:
    """The dtype in the base's ``config.json`` (named by the adapter's config), else float32."""
    try:
        config = json.loads((adapter / "adapter_config.json").read_text())
        base_config = Path(config["base_model_name_or_path"]) / "config.json"
        declared = json.loads(base_config.read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return "float32"
    dtype = str(declared.get("dtype") or declared.get("torch_dtype") or "float32")
    return dtype if dtype in _DTYPES else "float32"
