"""What the server needs to know about a causal LM's architecture, read from its config.

LoRA's target modules and the context limit differ between families; they come from the
model's ``config.json`` (``model_type``, the position limits), never from the model's name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Families whose decoder layers name their projections the Llama way. Every projection is
# targeted (attention and MLP): on SmolLM2 the MLP's share of a LoRA is what lifts a 135M
# student (the example project's 0.95 holdout score was measured with it), and vLLM, SGLang
# and Ollama all serve adapters on these seven modules.
LLAMA_STYLE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_FAMILIES: dict[str, tuple[str, ...]] = {
    name: LLAMA_STYLE
    for name in (
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3_text",
        "granite",
        "olmo",
        "olmo2",
    )
}
_FAMILIES.update(
    {
        "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
        "gpt2": ("c_attn", "c_proj", "c_fc"),
        "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    }
)

OLLAMA_ADAPTER_FAMILIES = frozenset({"llama", "mistral", "gemma", "gemma2"})
"""Architectures whose safetensors LoRA adapters ``ollama create`` imports (Ollama's docs)."""

_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
DEFAULT_CONTEXT = 2048


def lora_targets(config: Any, override: Sequence[str] | None = None) -> list[str] | str:
    """The module names a LoRA adapts on a model of ``config``.

    ``override`` (from the job's hyperparameters) wins; then the family table above; then
    peft's own table for the ``model_type``; then every linear layer but the output head
    (peft's ``"all-linear"``).
    """
    if override:
        return list(override)
    model_type = str(getattr(config, "model_type", "") or "")
    if model_type in _FAMILIES:
        return list(_FAMILIES[model_type])
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as known

    if model_type in known:
        return list(known[model_type])
    return "all-linear"


def module_names(model_type: str) -> frozenset[str] | None:
    """The names a LoRA may target on a model of ``model_type`` (its projections, the output
    head and the embeddings), or None for a family not in the table above (not checked)."""
    if model_type not in _FAMILIES:
        return None
    return frozenset(_FAMILIES[model_type]) | {"lm_head", "embed_tokens"}


def context_limit(config: Any) -> int:
    """Tokens the model attends over: the first position limit its config declares."""
    text = getattr(config, "text_config", None) or config
    for key in _CONTEXT_KEYS:
        value = getattr(text, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_CONTEXT
