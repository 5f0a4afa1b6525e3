"""Atomic writes: the target holds the old or the new content, never a part."""

import os
import stat

import pytest

from unet_keras.io.atomic import atomic_path


def test_atomic_path_renames_on_success(tmp_path):
    target = tmp_path / "sub" / "model.keras"
    with atomic_path(target) as temporary:
        assert temporary.parent == target.parent and temporary.suffix == ".keras"
        temporary.write_text("new")
        assert not target.exists()  # nothing visible until the block ends
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["model.keras"]


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "model.keras") as temporary:
            temporary.write_text("new")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "model.keras").stat().st_mode) == 0o644


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "result.png"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.png"]
