"""`unet-client`: segmenting files through a server, status, one-line errors."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.client.fake_serving import FakeServing, fake_model
from unet_keras.client import command as client_cli


def test_cli_segments_a_folder_and_names_the_failure(
    fake: FakeServing, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rng = np.random.default_rng(5)
    folder = tmp_path / "in"
    folder.mkdir()
    images = {"a": rng.integers(0, 256, (30, 20), dtype=np.uint8)}
    images["b"] = rng.integers(0, 256, (25, 35), dtype=np.uint8)
    Image.fromarray(images["a"]).save(folder / "a.png")
    Image.fromarray(images["b"]).save(folder / "b.tif")
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "notes.txt").write_text("skipped")
    status = client_cli.main(
        ["segment", str(folder), "-o", str(tmp_path / "out"), "--server", fake.address]
    )
    assert status == 1
    error = capsys.readouterr().err
    assert "broken.png" in error and "a.png" not in error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]
    for stem, image in images.items():
        written = np.asarray(Image.open(tmp_path / "out" / f"{stem}.png"))
        np.testing.assert_array_equal(written, fake_model(image[None, ..., None], 0, 1)["mask"][0])


def test_cli_status_and_one_line_errors(
    fake: FakeServing, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert client_cli.main(["status", "--server", fake.address]) == 0
    assert '"state": "AVAILABLE"' in capsys.readouterr().out

    with socket.socket() as unused:
        unused.bind(("localhost", 0))
        closed = f"localhost:{unused.getsockname()[1]}"
    assert client_cli.main(["status", "--server", closed, "--timeout", "0.5"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("unet-client: ") and error.count("\n") == 1 and "UNAVAILABLE" in error

    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(image)
    arguments = ["segment", str(image), "-o", str(tmp_path / "out"), "--server", fake.address]
    assert client_cli.main([*arguments, "--model", "other"]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err
    assert client_cli.main([*arguments, "--ca-cert", str(image)]) == 2
    assert "need --tls" in capsys.readouterr().err
    (tmp_path / "a.tif").write_bytes(b"")
    assert client_cli.main(["segment", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    assert "a.png and a.tif would both be written as a.png" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "unet-client"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "segment" in result.stdout and "status" in result.stdout


def test_segment_refuses_to_overwrite_its_input(
    fake: FakeServing, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    image = tmp_path / "b.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    before = image.read_bytes()
    status = client_cli.main(
        ["segment", str(image), "-o", str(tmp_path), "--server", fake.address]
    )
    assert status == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert image.read_bytes() == before
