"""The LoRA settings a fine-tuning job may carry beside OpenAI's hyperparameters.

``lora_rank``, ``lora_alpha`` and ``lora_target_modules`` are this server's own keys in
``method.supervised.hyperparameters``; OpenAI's API has no such keys. Left out, the rank is 16
(vLLM's default ``--max-lora-rank``) and the target modules come from the architecture.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from distill_server.errors import bad_request

LORA_KEYS = ("lora_rank", "lora_alpha", "lora_target_modules")
MAX_RANK = 256


def check_lora(given: Mapping[str, Any]) -> dict[str, Any]:
    """The LoRA keys of ``given`` that are set, validated; a bad one is a 400 naming it."""
    out: dict[str, Any] = {}
    for key in ("lora_rank", "lora_alpha"):
        value = given.get(key)
        if value is None or value == "auto":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_RANK:
            raise bad_request(f"`{key}` must be 'auto' or an integer from 1 to {MAX_RANK}.", key)
        out[key] = value
    modules = given.get("lora_target_modules")
    if modules is not None and modules != "auto":
        if not (
            isinstance(modules, list)
            and modules
            and all(isinstance(m, str) and m.strip() for m in modules)
        ):
            raise bad_request(
                "`lora_target_modules` must be 'auto' or a list of module names, e.g. "
                '["q_proj", "k_proj", "v_proj", "o_proj"].',
                "lora_target_modules",
            )
        out["lora_target_modules"] = [m.strip() for m in modules]
    return out
