"""The ``.distill/`` folder's layout, as users and older runs know it."""

from __future__ import annotations

from pathlib import Path

from pytest_distill import paths


def test_the_layout_under_the_rootdir(tmp_path: Path) -> None:
    distill = tmp_path / ".distill"
    assert paths.folder(tmp_path) == distill
    assert paths.state_file(tmp_path) == distill / "state.json"
    assert paths.datasets(tmp_path) == distill / "datasets"
    assert paths.replay_state(tmp_path) == distill / "replay" / "state.json"
    assert paths.server_dir(tmp_path) == distill / "server"


def test_a_training_set_lives_in_a_folder_named_by_its_hash(tmp_path: Path) -> None:
    digest = "0123456789abcdef" * 4
    train, manifest = paths.dataset_files(tmp_path, digest)
    assert train == tmp_path / "0123456789ab" / "train.jsonl"
    assert manifest == tmp_path / "0123456789ab" / "manifest.json"


def test_manifests_are_found_in_name_order_and_nothing_else(tmp_path: Path) -> None:
    for name in ("bbbbbbbbbbbb", "aaaaaaaaaaaa"):
        _, manifest = paths.dataset_files(paths.datasets(tmp_path), name)
        manifest.parent.mkdir(parents=True)
        manifest.write_text("{}")
    (paths.datasets(tmp_path) / "cccccccccccc").mkdir()  # a set whose manifest is not written
    (paths.datasets(tmp_path) / "manifest.json").write_text("{}")  # not a set's
    assert [p.parent.name for p in paths.manifests(tmp_path)] == ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]


def test_no_manifests_without_the_folder(tmp_path: Path) -> None:
    assert paths.manifests(tmp_path) == []
