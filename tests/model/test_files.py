"""``model.files``: atomic writes leave the old file or the whole new one, and no litter."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.files import atomic_path, write_atomic


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    write_atomic(target, b"old")
    write_atomic(target, "new \u00e9")
    assert target.read_text(encoding="utf-8") == "new \u00e9"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "train_state.pt"
    target.write_bytes(b"complete")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert target.read_bytes() == b"complete"
    assert [p.name for p in tmp_path.iterdir()] == ["train_state.pt"]


def test_the_temporary_path_is_hidden_beside_the_target_with_its_suffix(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "overlay.mp4") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".overlay.mp4.")
        assert tmp.suffix == ".mp4"
        tmp.write_bytes(b"video")
    with atomic_path(tmp_path / "overlay.mp4") as other:
        assert other != tmp
        other.write_bytes(b"video 2")
    assert (tmp_path / "overlay.mp4").read_bytes() == b"video 2"
