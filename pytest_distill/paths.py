"""The ``.distill/`` folder under the rootdir: everything pytest-distill keeps between runs.

::

    .distill/
        state.json                      jobs by key, the last fine-tuned model (training/state),
                                        --distill-batch's batches by input key (batches)
        datasets/<hash>/train.jsonl     a training file (training/dataset)
        datasets/<hash>/manifest.json   its lineage (training/dataset; verdict/leakage reads it)
        replay/state.json               the job state a replayed distill step starts from
        server/                         the embedded server's data directory, as the plugin
                                        starts it (``distill-server`` has its own default)

``<hash>`` is the first 12 hex digits of the training file's SHA-256.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

FOLDER: Final = ".distill"
STATE: Final = "state.json"
DATASETS: Final = "datasets"
TRAINING_FILE: Final = "train.jsonl"
MANIFEST: Final = "manifest.json"
REPLAY: Final = "replay"
SERVER: Final = "server"


def folder(rootpath: Path) -> Path:
    """``.distill/`` itself."""
    return rootpath / FOLDER


def state_file(rootpath: Path) -> Path:
    return folder(rootpath) / STATE


def datasets(rootpath: Path) -> Path:
    """The folder that holds one folder per training set."""
    return folder(rootpath) / DATASETS


def dataset_files(directory: Path, sha256: str) -> tuple[Path, Path]:
    """The training file and its manifest for the set whose content hashes to ``sha256``,
    under ``directory`` (:func:`datasets`)."""
    where = directory / sha256[:12]
    return where / TRAINING_FILE, where / MANIFEST


def manifests(rootpath: Path) -> list[Path]:
    """Every training set's manifest, in name order."""
    return sorted(datasets(rootpath).glob(f"*/{MANIFEST}"))


def replay_state(rootpath: Path) -> Path:
    """The state file a replayed distill step uses instead of :func:`state_file`."""
    return folder(rootpath) / REPLAY / STATE


def server_dir(rootpath: Path) -> Path:
    """The embedded server's data directory when the plugin starts it."""
    return folder(rootpath) / SERVER
