"""The one-time conversion of a GGUF model into a Hugging Face directory, in a child process.

transformers prints its dequantizing progress bar straight to this process's stderr, where
pytest would capture it into whichever test happened to run first; in a child, its output
is the child's own, and only a failure's last line comes back.

    python -m distill_server.weights.convert MODEL.gguf TARGET_DIR
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from distill_server.errors import ApiError


def convert(gguf: Path, target: Path) -> None:
    """Write the converted model to ``target`` (via a ``.partial-PID`` folder, then a rename)."""
    command = [sys.executable, "-m", __name__, str(gguf), str(target)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        why = lines[-1] if lines else f"exit code {done.returncode}"
        raise ApiError(500, f"Converting {gguf.name} failed: {why}", type="server_error")


def pending(gguf: Path, target: Path) -> bool:
    """True when ``gguf`` has not been converted into ``target`` yet."""
    return not (target / "config.json").is_file()


def _main(gguf: Path, target: Path) -> None:
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

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
    try:
        os.replace(partial, target)
    except OSError:  # another process converted it first; theirs is as good
        shutil.rmtree(partial, ignore_errors=True)


if __name__ == "__main__":
    _main(Path(sys.argv[1]), Path(sys.argv[2]))
