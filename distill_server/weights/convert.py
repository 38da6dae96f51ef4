"""The one-time conversion of a GGUF model into a Hugging Face directory, in a child process.

transformers prints its dequantizing progress bar straight to this process's stderr, where
pytest would capture it into whichever test happened to run first; in a child, its output
is the child's own, and only a failure's last line comes back.

    python -m distill_server.weights.convert MODEL.gguf TARGET_DIR [PARENT_PID]

The child ends when its parent does, even killed with SIGKILL (no ``finally`` runs then): on
Linux the kernel sends it SIGKILL (``PR_SET_PDEATHSIG``), elsewhere it notices within
``_PARENT_POLL_S`` that it was handed to another parent.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from distill_server.errors import ApiError

_PARENT_POLL_S = 1.0
_PR_SET_PDEATHSIG = 1


def convert(gguf: Path, target: Path) -> None:
    """Write the converted model to ``target`` (via a ``.partial-PID`` folder, then a rename)."""
    command = [sys.executable, "-m", __name__, str(gguf), str(target), str(os.getpid())]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        why = lines[-1] if lines else f"exit code {done.returncode}"
        raise ApiError(500, f"Converting {gguf.name} failed: {why}", type="server_error")


def pending(gguf: Path, target: Path) -> bool:
    """True when ``gguf`` has not been converted into ``target`` yet."""
    return not (target / "config.json").is_file()


def die_with_parent(parent: int, *, poll_only: bool = False) -> None:
    """End this process when process ``parent`` ends (it may already have)."""
    if sys.platform == "linux" and not poll_only:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0) == 0:  # SIGKILL
                if os.getppid() != parent:  # it ended before the call
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _main(gguf: Path, target: Path) -> None:
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill_server.private import private_tree

    kwargs = {"local_files_only": True, "gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, **kwargs)
    # The weights are dequantized fp32 by now; the stale GGUF quantization settings would
    # send the next load back through the GGUF quantizer.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    private_tree(partial)
    try:
        os.replace(partial, target)
    except OSError:  # another process converted it first; theirs is as good
        shutil.rmtree(partial, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 3:
        die_with_parent(int(sys.argv[3]))
    _main(Path(sys.argv[1]), Path(sys.argv[2]))
