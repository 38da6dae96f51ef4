"""Checkpoints a job can resume from: the adapter, the optimizer and where training was.

Imports torch at import time: only the LoRA trainer imports it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distill_server.models import OPTIMIZER_STATE as STATE_FILE
from distill_server.private import private_tree


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a job had trained when a checkpoint was saved."""

    step: int
    epochs: int
    tokens: int
    seconds: float


def save(model: Any, path: Path, state: dict[str, Any] | None = None) -> Path:
    """Write the adapter (and ``state``, to resume from) to ``path``, all or nothing.

    A kill mid-save leaves a ``.partial`` folder, never a checkpoint missing its state.
    """
    partial = path.with_name(f"{path.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(str(partial))
    if state is not None:
        torch.save(state, partial / STATE_FILE)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(partial, path)
    private_tree(path)
    return path


def state(optimizer: Any, order: torch.Generator, progress: Progress) -> dict[str, Any]:
    return {
        "optimizer": optimizer.state_dict(),
        "order": order.get_state(),
        "step": progress.step,
        "epochs": progress.epochs,
        "tokens": progress.tokens,
        "seconds": progress.seconds,
    }


def resumable(path: Path) -> bool:
    return (path / STATE_FILE).is_file()


def restore(model: Any, optimizer: Any, order: torch.Generator, path: Path) -> Progress:
    """Load the adapter weights, optimizer and data order saved at ``path``."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
    saved = torch.load(path / STATE_FILE, weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    order.set_state(saved["order"])
    return Progress(saved["step"], saved["epochs"], saved["tokens"], saved["seconds"])
