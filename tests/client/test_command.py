"""`unet-client`: segmenting files through a server, status, one-line errors."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.client.fake_serving import FakeServing, fake_model, model_record
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


def test_cli_sends_each_section_of_a_stack_with_its_neighbours(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A model with context_sections 1: a folder is one stack in name order (s2 before
    s10), each request the section with the one above and below as channels, mirrored at
    the ends; a lone image is refused before any request."""
    import dataclasses

    from unet_keras.client.tensors import make_ndarray
    from unet_keras.io.context import stacked_normalization
    from unet_keras.record import ModelConfig

    plain = model_record()
    record = dataclasses.replace(
        plain,
        normalization=stacked_normalization(plain.normalization, 1),
        model=ModelConfig(in_channels=3, depth=2, padding="valid"),
        context_sections=1,
    )
    fake = FakeServing(record=record).start()
    try:
        folder = tmp_path / "stack"
        folder.mkdir()
        rng = np.random.default_rng(2)
        sections = {
            name: rng.integers(0, 256, (20, 30), dtype=np.uint8) for name in ("s1", "s2", "s10")
        }
        for name, section in sections.items():
            Image.fromarray(section).save(folder / f"{name}.png")
        argv = ["segment", str(folder), "-o", str(tmp_path / "out"), "--server", fake.address]
        assert client_cli.main(argv) == 0
        sent = [
            make_ndarray(request.inputs["image"])[0]
            for method, request in fake.requests
            if method == "Predict" and request.model_spec.signature_name in ("", "serving_default")
        ]
        order = [sections["s1"], sections["s2"], sections["s10"]]
        expected = {
            0: np.stack([order[1], order[0], order[1]], -1),
            1: np.stack(order, -1),
            2: np.stack([order[1], order[2], order[1]], -1),
        }
        assert len(sent) == 3
        for image in sent:  # sent concurrently: in any order
            centre = next(i for i, section in enumerate(order) if (image[..., 1] == section).all())
            np.testing.assert_array_equal(image, expected[centre])
        for index, name in enumerate(("s1", "s2", "s10")):
            written = np.asarray(Image.open(tmp_path / "out" / f"{name}.png"))
            model = fake_model(expected[index][None], 0, 1)["mask"][0]
            np.testing.assert_array_equal(written, model)
        lone = ["segment", str(folder / "s1.png"), "-o", str(tmp_path / "lone")]
        assert client_cli.main([*lone, "--server", fake.address]) == 2
        assert "s1.png: a lone image, but the model sees 1 section(s)" in capsys.readouterr().err
    finally:
        fake.stop()
