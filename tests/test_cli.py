"""The `unet-keras` command: synthetic data out, data set inspection, clear errors."""

import json
import subprocess
import sys
from pathlib import Path

from unet_keras import cli


def test_synthetic_then_inspect(tmp_path, capsys):
    assert cli.main(["synthetic", str(tmp_path / "data"), "--count", "3", "--size", "64"]) == 0
    assert sorted(p.name for p in (tmp_path / "data" / "images").iterdir()) == [
        "synthetic_00.png",
        "synthetic_01.png",
        "synthetic_02.png",
    ]
    capsys.readouterr()
    assert cli.main(["inspect", str(tmp_path / "data")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == report["labelled"] == 3
    assert report["sizes"] == ["64x64"]
    # Synthetic masks follow ISBI: 255 = cell interior (the majority), 0 = membrane.
    assert report["mask"]["class_values"] == [0, 255]
    assert report["class_fractions"]["0"] < 0.5


def test_bad_input_gives_one_line_and_status_2(tmp_path, capsys):
    assert cli.main(["inspect", str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("unet-keras inspect: error:") and "missing" in error


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "unet-keras"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "synthetic" in result.stdout and "inspect" in result.stdout
