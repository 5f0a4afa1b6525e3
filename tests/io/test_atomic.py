"""Atomic writes: the target holds the old or the new content, never a part."""

import os
import signal
import stat
import subprocess
import sys

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


def test_a_writer_killed_mid_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "model.keras"
    target.write_text("old")
    script = (
        "import sys, time\n"
        "from unet_keras.io.atomic import atomic_path\n"
        "with atomic_path(sys.argv[1]) as partial:\n"
        "    with open(partial, 'w') as handle:\n"
        "        handle.write('new, half of it'); handle.flush()\n"
        "        print('writing', flush=True); time.sleep(60)\n"
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert target.read_text() == "old"
    # What the killed writer left is hidden and not a model file anyone would load.
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["model.keras"]


def test_writes_are_flushed_to_disk_before_and_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(descriptor):
        synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    with atomic_path(tmp_path / "a.png") as temporary:
        temporary.write_text("data")
    assert len(synced) == 2
    assert ".partial" in synced[0] and synced[1] == str(tmp_path)
