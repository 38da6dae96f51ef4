"""Where models run: the device and dtype, chosen once per server, and whether a model fits.

``auto`` takes CUDA when torch sees a GPU (bfloat16 where the GPU supports it, else float16) and
the CPU in float32 otherwise. torch is imported only inside the functions that need it, so the
server's configuration can name a device without loading torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

DeviceChoice = Literal["auto", "cpu", "cuda"]
DEVICE_CHOICES: tuple[DeviceChoice, ...] = ("auto", "cpu", "cuda")
_GIB = 1024**3


class DeviceUnavailable(RuntimeError):
    """The requested device cannot be used here (no GPU that torch sees)."""


class ModelTooLarge(RuntimeError):
    """A model does not fit in the memory of its device; the message is one line."""


@dataclass(frozen=True, slots=True)
class Placement:
    """A device and the dtype models are loaded in there."""

    device: str
    """``cpu`` or ``cuda`` (the current CUDA device)."""
    dtype: str
    """``float32``, ``bfloat16`` or ``float16``: a ``torch`` attribute name."""

    @property
    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype)

    def __str__(self) -> str:
        return f"{self.device} ({self.dtype})"


CPU = Placement("cpu", "float32")


def choose(requested: DeviceChoice = "auto") -> Placement:
    """The placement for ``requested``; ``cuda`` without a GPU is ``DeviceUnavailable``."""
    if requested == "cpu":
        return CPU
    import torch

    if not torch.cuda.is_available():
        if requested == "cuda":
            raise DeviceUnavailable(
                "device 'cuda' was asked for, but torch sees no CUDA GPU "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                "install a CUDA build of torch or use --device cpu"
            )
        return CPU
    # Ampere and newer do bfloat16 natively; older GPUs emulate it slowly, so float16 there.
    dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return Placement("cuda", dtype)


def estimated_bytes(config: Any, placement: Placement) -> int:
    """Bytes a model of ``config`` takes in ``placement``'s dtype, counted on the meta device
    (no memory is allocated for the weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    size = torch.empty((), dtype=placement.torch_dtype).element_size()
    return sum(int(p.numel()) for p in skeleton.parameters()) * int(size)


def available_bytes(placement: Placement) -> int | None:
    """Free memory of the device (``MemAvailable`` on the CPU), or None when it cannot be told."""
    if placement.device == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        return int(free)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def too_large(model_id: str, needed: int, placement: Placement, free: int | None) -> ModelTooLarge:
    """The one-line error for a model that does not fit."""
    had = "" if free is None else f", {free / _GIB:.2f} GiB is free"
    return ModelTooLarge(
        f"model {model_id!r} does not fit on {placement}: its weights need {needed / _GIB:.2f} "
        f"GiB{had}; use a smaller model, free the device, or pick another with --device "
        "(ini distill_local_device)"
    )


def check_fits(model_id: str, needed: int, placement: Placement) -> None:
    """Raise ``ModelTooLarge`` when ``needed`` bytes exceed the device's free memory."""
    free = available_bytes(placement)
    if free is not None and needed > free:
        raise too_large(model_id, needed, placement, free)


@contextlib.contextmanager
def out_of_memory_as_too_large(model_id: str, needed: int, placement: Placement) -> Iterator[None]:
    """Turn CUDA's out-of-memory error inside the block into the one-line ``ModelTooLarge``."""
    import torch

    try:
        yield
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        raise too_large(model_id, needed, placement, available_bytes(placement)) from None


def release_freed_memory() -> None:
    """Hand the C allocator's free pages back to the system: glibc keeps what a thread freed
    in its arena otherwise (``malloc_trim``; nothing elsewhere, as musl has no such call)."""
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
