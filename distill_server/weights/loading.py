"""Loading models from local files, and the chat template, for serving and training alike.

Imports torch and transformers at import time; only the engine and the trainer import it.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from distill_server import devices
from distill_server.errors import ApiError
from distill_server.models import ModelSource, converted_dir
from distill_server.weights import chat_format, convert

_LOAD_LOCK = threading.Lock()
_LOADED: dict[tuple[str, str, str], weakref.ReferenceType[Any]] = {}
"""Models loaded and still alive, by directory, device and dtype (``_LOAD_LOCK`` held)."""
_WEIGHTS = "_distill_weights"


def load_pretrained(
    source: ModelSource, placement: devices.Placement | None = None
) -> tuple[Any, Any]:
    """Tokenizer and causal LM for ``source``, from local files only, on its device.

    The device is ``source.device`` (``auto``: CUDA in bfloat16 or float16 when torch sees a
    GPU, else the CPU in float32). A model whose weights would not fit raises the one-line
    ``ApiError`` of ``ModelTooLarge`` before anything is allocated. A GGUF model is converted
    once and kept under ``source.cache``: dequantizing SmolLM2's GGUF takes ~25 s on two cores,
    loading the converted copy well under one. ``placement`` overrides the device and dtype.
    """
    try:
        placement = placement or devices.choose(source.device)
    except devices.DeviceUnavailable as exc:
        raise ApiError(400, str(exc), param="model", code="device_unavailable") from None
    # Serialised: transformers' GGUF converter is not thread-safe, and the serving and
    # training threads may both load the same base at once.
    with _LOAD_LOCK:
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        converted = converted_dir(source)
        if converted is not None and convert.pending(source.path, converted):
            convert.convert(source.path, converted)
        if converted is not None:
            # Loaded back from the converted copy even the first time, so that the model
            # names a directory with a config.json (peft looks there when saving adapters).
            tokenizer, model = _load_shared(source, converted, None, placement)
        else:
            tokenizer, model = _load_shared(source, source.directory, source.gguf_file, placement)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, model.eval()


def load_tokenizer(source: ModelSource) -> Any:
    """The tokenizer of ``source`` alone (no weights), from its converted copy when one is
    made."""
    converted = converted_dir(source)
    if converted is not None and (converted / "config.json").is_file():
        return AutoTokenizer.from_pretrained(converted, local_files_only=True)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    return AutoTokenizer.from_pretrained(source.directory, **kwargs)


def _load_shared(
    source: ModelSource, directory: Path, gguf_file: str | None, placement: devices.Placement
) -> tuple[Any, Any]:
    """Load the model, or, while another copy loaded from the same files lives (the server
    serving it while a job trains on it), a model of its own modules around the same weight
    tensors: one copy of the base weights in memory.

    Sharing is safe as both sides only read the base weights: the engine serves under
    ``inference_mode``, and the trainer freezes them (peft wraps its own modules with LoRA
    layers and trains only those).
    """
    key = (str(directory / (gguf_file or "")), placement.device, placement.dtype)
    alive = _LOADED.get(key)
    first = alive() if alive is not None else None
    if first is not None:
        kwargs: dict[str, Any] = {"local_files_only": True}
        if gguf_file:
            kwargs["gguf_file"] = gguf_file
        tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
        return tokenizer, _around(first)
    tokenizer, model = _load(source, directory, gguf_file, placement)
    # Captured now, before peft wraps any of its modules: the names and tensors of its weights
    # and buffers (the rotary frequencies are buffers that are not saved).
    weights = dict(model.state_dict())
    buffers = dict(model.named_buffers())
    setattr(model, _WEIGHTS, (weights, buffers))
    _LOADED[key] = weakref.ref(model)
    return tokenizer, model


def _around(first: Any) -> Any:
    """A model of its own modules whose parameters and buffers are ``first``'s tensors."""
    import torch

    weights, buffers = getattr(first, _WEIGHTS)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(first.config, dtype=first.dtype)  # type: ignore[no-untyped-call]
    model.load_state_dict(weights, assign=True, strict=True)
    for name, buffer in buffers.items():
        owner, _, attribute = name.rpartition(".")
        model.get_submodule(owner)._buffers[attribute] = buffer
    model.generation_config = first.generation_config
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"weights not shared with the loaded model: {', '.join(left)}")
    setattr(model, _WEIGHTS, (weights, buffers))
    return model


def _load(
    source: ModelSource,
    directory: Path,
    gguf_file: str | None,
    placement: devices.Placement = devices.CPU,
) -> tuple[Any, Any]:
    kwargs: dict[str, Any] = {"local_files_only": True}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
    config = AutoConfig.from_pretrained(directory, **kwargs)
    needed = devices.estimated_bytes(config, placement)
    try:
        devices.check_fits(source.id, needed, placement)
        with devices.out_of_memory_as_too_large(source.id, needed, placement):
            model = AutoModelForCausalLM.from_pretrained(
                directory, dtype=placement.torch_dtype, **_placed(placement), **kwargs
            )
    except devices.ModelTooLarge as exc:
        # A 400, not a 5xx: clients retry server errors, and loading again cannot help.
        raise ApiError(400, str(exc), param="model", code="model_too_large") from None
    return tokenizer, model


def _placed(placement: devices.Placement) -> dict[str, Any]:
    # Straight onto the GPU: loading on the CPU first would need the model's size in RAM too.
    return {"device_map": placement.device} if placement.device != "cpu" else {}


@contextlib.contextmanager
def quiet_peft(model: Any) -> Iterator[None]:
    """While peft wraps ``model``, its deprecated ``is_gradient_checkpointing`` is not read.

    peft 0.21 reads ``model.is_gradient_checkpointing``, which transformers 5 deprecated with a
    FutureWarning. The warning must not be raised in a pytest run whose warnings are errors, and
    ``warnings.catch_warnings`` cannot silence it here: it swaps the process's filter list, and
    the trainer runs beside the user's tests, whose own ``catch_warnings`` (pytest's, per test)
    could restore a list without our filter mid-way (it did: a job failed on the warning). So
    for the wrap only, the model's class is one whose alias reads the new name, and nothing
    global changes.
    """
    original = type(model)
    alias = getattr(original, "is_gradient_checkpointing", None)
    if not isinstance(alias, property) or not hasattr(original, "is_activation_checkpointing"):
        yield
        return
    model.__class__ = _without_deprecated_alias(original)
    try:
        yield
    finally:
        model.__class__ = original


_ALIAS_FREE: dict[type, type] = {}
_ALIAS_FREE_LOCK = threading.Lock()


def _without_deprecated_alias(cls: type) -> type:
    with _ALIAS_FREE_LOCK:
        if cls not in _ALIAS_FREE:
            _ALIAS_FREE[cls] = _alias_free_class(cls)
        return _ALIAS_FREE[cls]


def _alias_free_class(cls: type) -> type:
    def is_gradient_checkpointing(self: Any) -> bool:
        return bool(self.is_activation_checkpointing)

    namespace = {
        "is_gradient_checkpointing": property(is_gradient_checkpointing),
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
    }
    return type(cls.__name__, (cls,), namespace)


def render(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    generation_prompt: bool,
    tools: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The prompt text: the model's own chat template, with tools and tool calls in the
    format of ``chat_format`` (one format for serving and training)."""
    return chat_format.render(tokenizer, messages, generation_prompt, tools)


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of rendered text; the template already holds the special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
