"""Loading models from local files, and the chat template, for serving and training alike.

Imports torch and transformers at import time; only the engine and the trainer import it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from pytest_distill.local.errors import ApiError
from pytest_distill.local.models import ModelSource

_LOAD_LOCK = threading.Lock()


def load_pretrained(source: ModelSource) -> tuple[Any, Any]:
    """Tokenizer and fp32 causal LM for ``source``, from local files only.

    A GGUF model is converted once and kept under ``source.cache``: dequantizing SmolLM2's GGUF
    takes ~25 s on two cores, loading the converted copy well under one.
    """
    # Serialised: transformers' GGUF converter is not thread-safe, and the serving and
    # training threads may both load the same base at once.
    with _LOAD_LOCK:
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        converted = _converted_dir(source)
        if converted is not None and not (converted / "config.json").is_file():
            _save_converted(*_load(source.directory, source.gguf_file), converted)
        if converted is not None:
            # Loaded back from the converted copy even the first time, so that the model
            # names a directory with a config.json (peft looks there when saving adapters).
            tokenizer, model = _load(converted, None)
        else:
            tokenizer, model = _load(source.directory, source.gguf_file)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, model.eval()


def _load(directory: Path, gguf_file: str | None) -> tuple[Any, Any]:
    kwargs: dict[str, Any] = {"local_files_only": True}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, **kwargs)
    return tokenizer, model


def _converted_dir(source: ModelSource) -> Path | None:
    if source.cache is None or source.gguf_file is None:
        return None
    stat = source.path.stat()
    key = f"{source.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return source.cache / hashlib.sha1(key.encode()).hexdigest()[:16]


def _save_converted(tokenizer: Any, model: Any, target: Path) -> None:
    # The weights are dequantized fp32 by now; the stale GGUF quantization settings would
    # send the next load back through the GGUF quantizer.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    try:
        os.replace(partial, target)
    except OSError:  # another process converted it first; theirs is as good
        shutil.rmtree(partial, ignore_errors=True)


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Silence one known FutureWarning while peft wraps a model.

    peft 0.21 reads ``model.is_gradient_checkpointing``, which transformers 5 deprecated; the
    warning is theirs to fix, and a test run with warnings as errors must not fail on it.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


def render(tokenizer: Any, messages: Sequence[dict[str, str]], generation_prompt: bool) -> str:
    """The model's own chat template, as text."""
    if not tokenizer.chat_template:
        raise ApiError(400, "This model's tokenizer has no chat template.", code="no_template")
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=generation_prompt
    )
    return str(text)


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of rendered text; the template already holds the special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
