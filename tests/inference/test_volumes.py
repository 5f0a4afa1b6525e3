"""unet_keras.inference.volumes: Zarr volumes predicted block by block equal whole sections,
resume after a kill, and run on a Dask cluster of worker processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from distributed.diagnostics.plugin import WorkerPlugin

from unet_keras import workflows
from unet_keras.cli import main
from unet_keras.inference.inference_settings import InferenceConfig, PredictConfig
from unet_keras.inference.segmenter import Segmenter
from unet_keras.inference.volumes import environment_restored
from unet_keras.io.ome_zarr import create_volume, is_finished

# Tiles of 76 pixels (36 out) on 32-pixel chunks and 40-pixel blocks: tiles straddle
# blocks, and blocks straddle chunks, so every seam is crossed.
INFERENCE = {"tiling": {"tile": 76}, "batch_size": 2}


def make_volume(path: Path, shape: tuple[int, ...], zarr_format: int = 3, ome: bool = False):
    """A random uint8 volume in 32-pixel chunks, one section a chunk; returns its pixels."""
    pixels = np.random.default_rng(len(shape)).integers(0, 256, shape, dtype=np.uint8)
    chunks = (1, 32, 32)[-len(shape) :]
    create_volume(path, shape, chunks, "uint8", zarr_format, ome)[...] = pixels
    return pixels


def whole_sections(
    model: Path, pixels: np.ndarray, inference: dict = INFERENCE
) -> tuple[np.ndarray, np.ndarray]:
    """Masks and probabilities (classes first) of each section predicted whole."""
    options = InferenceConfig.from_dict(inference).segmenter_options()
    segmenter = Segmenter.from_path(model, **options)
    sections = pixels.reshape(-1, *pixels.shape[-2:])
    maps = np.stack([segmenter.probabilities(s[..., None]) for s in sections])
    masks = np.stack([segmenter.mask(segmenter.labels(p)) for p in maps])
    shape = pixels.shape
    return masks.reshape(shape), np.moveaxis(maps, -1, 0).reshape(-1, *shape)


def config(model: Path, volume: Path, output: Path, **options: object) -> PredictConfig:
    values = {"inference": INFERENCE, "block": 40, **options}
    return PredictConfig.from_dict(
        {"model": str(model), "input": str(volume), "output": str(output), **values}
    )


@pytest.mark.parametrize(
    ("shape", "zarr_format", "ome", "batch_size"),
    [((3, 100, 90), 2, False, 1), ((100, 90), 3, True, 2)],
)
def test_blocks_equal_whole_sections(
    tmp_path, tiny_model_file, shape, zarr_format, ome, batch_size
):
    model = tiny_model_file()
    pixels = make_volume(tmp_path / "in.zarr/em", shape, zarr_format, ome)
    inference = {**INFERENCE, "batch_size": batch_size}
    volume, output = tmp_path / "in.zarr/em", tmp_path / "out.zarr"
    job = config(model, volume, output, inference=inference, probabilities="zarr")
    report = workflows.predict(job, progress=False)
    masks, maps = whole_sections(model, pixels, inference)
    out = zarr.open_group(tmp_path / "out.zarr", mode="r")
    assert np.array_equal(out["labels/mask/0"][...], masks)
    if batch_size == 1:  # the default: bit for bit
        assert np.array_equal(out["probabilities/0"][...], maps)
    else:
        # With TensorFlow's own CPU kernels (oneDNN off: AVX2 CPUs) a tile's probabilities
        # round 1 ulp differently with other tiles in its call (seen: 141 of 27,000).
        np.testing.assert_allclose(out["probabilities/0"][...], maps, rtol=0, atol=1e-6)
    assert out["labels/mask/0"].chunks == (1, 32, 32)[-len(shape) :]
    assert out.metadata.zarr_format == zarr_format
    blocks = (shape[0] if len(shape) == 3 else 1) * 2 * 2  # 64-pixel blocks of 32 chunks
    assert (report.predicted, report.skipped, report.failed) == (blocks, 0, [])
    again = workflows.predict(job, progress=False)
    assert (again.predicted, again.skipped) == (0, blocks)


@pytest.mark.parametrize("link", [False, True])
def test_objects_of_a_volume_equal_those_of_its_whole_sections(tmp_path, tiny_model_file, link):
    from unet_keras.inference.inference_settings import InstanceConfig
    from unet_keras.inference.instances import label_objects, link_sections
    from unet_keras.io.masks import mask_to_labels

    model = tiny_model_file()
    pixels = make_volume(tmp_path / "in.zarr", (3, 100, 90))
    objects = InstanceConfig(instances="watershed", seed_height=2.0, link_sections=link)
    options = {"objects": objects.to_dict()}
    workflows.predict(config(model, tmp_path / "in.zarr", tmp_path / "out.zarr", **options))
    masks, _ = whole_sections(model, pixels)
    record = Segmenter.from_path(model).record
    expected = np.stack([label_objects(mask_to_labels(m, record.mask), objects) for m in masks])
    if link:
        expected = link_sections(expected, objects.min_overlap)
    labels = zarr.open_group(tmp_path / "out.zarr", mode="r")["labels/objects/0"]
    assert expected.max() > 3  # objects to label, and for a link test, to link
    assert np.array_equal(labels[...], expected)
    assert is_finished(tmp_path / "out.zarr", "labels/objects")


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_reads_the_output_as_an_image_with_labels_and_pyramids(
    tmp_path, tiny_model_file, zarr_format
):
    """ome-zarr-py's reader (napari's OME-Zarr plugin) opens the store as the input's image
    with the mask and objects as labels, each with 3 levels; ome-zarr-models validates
    every group against the NGFF version the Zarr format takes (0.4 in v2, 0.5 in v3)."""
    import ome_zarr_models
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    model = tiny_model_file()
    pixels = make_volume(tmp_path / "in.zarr", (2, 100, 90), zarr_format)
    out = tmp_path / "out.zarr"
    options = {"probabilities": "zarr", "objects": {"instances": "cc"}}
    workflows.predict(config(model, tmp_path / "in.zarr", out, **options), progress=False)
    nodes = list(Reader(parse_url(str(out)))())
    image = nodes[0]
    assert image.specs[0].__class__ is Multiscales and len(image.data) == 3
    assert np.array_equal(np.asarray(image.data[0]), pixels)
    labels = {
        node.metadata["name"]: node
        for node in nodes
        if any(isinstance(spec, Label) for spec in node.specs)
    }
    assert sorted(labels) == ["mask", "objects"]
    mask = labels["mask"]
    assert [level.shape for level in mask.data] == [(2, 100, 90), (2, 50, 45), (2, 25, 23)]
    assert set(mask.metadata["color"]) == {0, 255}
    full = np.asarray(mask.data[0])
    assert np.array_equal(full, whole_sections(model, pixels)[0])
    assert np.array_equal(np.asarray(mask.data[2]), full[:, ::4, ::4])
    version = "0.5" if zarr_format == 3 else "0.4"
    root = zarr.open_group(out, mode="r")
    for name in ("", "probabilities", "labels", "labels/mask", "labels/objects"):
        model_of = ome_zarr_models.open_ome_zarr(root[name] if name else root, version=version)
        assert type(model_of).__name__ == {"labels": "Labels"}.get(
            name, "ImageLabel" if name.startswith("labels/") else "Image"
        ), name
    probabilities = zarr.open_group(out / "probabilities", mode="r")
    fine, coarse = probabilities["0"][...], probabilities["1"][...]
    np.testing.assert_allclose(
        coarse[..., :1, :1], fine[..., :2, :2].mean(axis=(-2, -1), keepdims=True), rtol=1e-6
    )


def test_a_killed_run_rerun_writes_only_the_missing_blocks(tmp_path, tiny_model_file):
    model = tiny_model_file()
    pixels = make_volume(tmp_path / "in.zarr", (24, 96, 96))
    out = tmp_path / "out.zarr"
    command = [sys.executable, "-m", "unet_keras.cli", "predict", "--model", str(model)]
    command += ["--input", str(tmp_path / "in.zarr"), "--output", str(out), "--block", "32"]
    command += ["--tile", "76", "--batch-size", "2"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    total = 24 * 3 * 3
    try:
        done = 0
        deadline = time.monotonic() + 120
        while done < total // 10 and time.monotonic() < deadline:
            time.sleep(0.02)
            if (out / ".unet_keras/progress").exists():
                done = int(zarr.open_array(out / ".unet_keras/progress", mode="r")[...].sum())
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    marked = int(zarr.open_array(out / ".unet_keras/progress", mode="r")[...].sum())
    assert 0 < marked < total, "the run was not stopped midway"
    report = workflows.predict(config(model, tmp_path / "in.zarr", out, block=32), progress=False)
    assert (report.skipped, report.predicted) == (marked, total - marked)
    assert np.array_equal(
        zarr.open_array(out / "labels/mask/0", mode="r")[...], whole_sections(model, pixels)[0]
    )


@contextlib.contextmanager
def two_local_workers() -> Iterator[Any]:
    """A local Dask cluster of two single-threaded worker processes; os.environ restored."""
    import distributed

    with environment_restored(), distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    ) as cluster:  # fmt: skip
        yield cluster


def test_a_dask_cluster_of_two_worker_processes_gives_the_same_volume(tmp_path, tiny_model_file):
    import distributed

    model = tiny_model_file()
    pixels = make_volume(tmp_path / "in.zarr", (4, 70, 70))
    with (
        two_local_workers() as cluster,
    ):
        settings = config(model, tmp_path / "in.zarr", tmp_path / "out.zarr")
        settings = PredictConfig.from_dict(
            {**settings.to_dict(), "scheduler": cluster.scheduler_address}
        )
        report = workflows.predict(settings, progress=False)
        with distributed.Client(cluster) as client:
            loaded = client.run(_models_loaded)
    assert report.failed == [] and report.predicted == 4 * 2 * 2
    # Two worker processes, each of which loaded the model once at most.
    assert len(loaded) == 2 and set(loaded.values()) <= {0, 1} and sum(loaded.values()) >= 1
    masks = zarr.open_array(tmp_path / "out.zarr/labels/mask/0", mode="r")[...]
    assert np.array_equal(masks, whole_sections(model, pixels)[0])
    # The pyramid, its blocks written by the workers: nearest pixels of the level above.
    halved = zarr.open_array(tmp_path / "out.zarr/labels/mask/1", mode="r")[...]
    assert np.array_equal(halved, masks[:, ::2, ::2])


def test_local_worker_processes_give_the_same_volume_and_leave_the_environment(
    tmp_path, tiny_model_file
):
    """--workers 2 starts its own cluster; distributed's nanny sets OMP_NUM_THREADS=1 in
    this process too, which must not outlive the run."""
    model = tiny_model_file()
    pixels = make_volume(tmp_path / "in.zarr", (2, 70, 70))
    settings = config(model, tmp_path / "in.zarr", tmp_path / "out.zarr")
    settings = PredictConfig.from_dict({**settings.to_dict(), "workers": 2})
    environment = dict(os.environ)
    report = workflows.predict(settings, progress=False)
    assert dict(os.environ) == environment
    assert report.failed == [] and report.predicted == 2 * 2 * 2
    masks = zarr.open_array(tmp_path / "out.zarr/labels/mask/0", mode="r")[...]
    assert np.array_equal(masks, whole_sections(model, pixels)[0])


class _KillWorkerOnce(WorkerPlugin):
    """A worker plugin: the first time a task whose key holds one of `patterns` starts
    on a worker, that worker process dies (os._exit), as a lost machine would; a marker
    file per pattern, made just before, keeps every other try alive."""

    def __init__(self, folder: str, patterns: tuple[str, ...]):
        self.folder, self.patterns = folder, patterns

    def transition(self, key, start, finish, **kwargs):
        if finish != "executing":
            return
        for pattern in self.patterns:
            if pattern in str(key):
                try:
                    os.close(os.open(Path(self.folder, pattern), os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    continue
                os._exit(1)


def _fails_once(marker: str) -> str:
    """A task that raises the first time it runs, then succeeds."""
    if not os.path.exists(marker):
        Path(marker).touch()
        raise OSError("a flaky shared disk")
    return "ok"


def test_a_worker_lost_mid_volume_and_mid_labelling_changes_nothing(tmp_path, tiny_model_file):
    """Two worker processes; one dies as block (2, 1, 1) starts, and one as the first
    labelling task starts: the tasks run again on the worker left or the one the nanny
    restarts, and the masks and linked objects equal a run without failure."""
    import distributed

    from unet_keras.inference.volumes import _map_on_cluster

    model = tiny_model_file()
    pixels = make_volume(tmp_path / "in.zarr", (4, 70, 70))
    markers = tmp_path / "markers"
    markers.mkdir()
    objects = {"instances": "cc", "link_sections": True}
    plugin = _KillWorkerOnce(str(markers), ("-2-1-1-", "label_piece"))
    with (
        two_local_workers() as cluster,
        distributed.Client(cluster) as client,
    ):
        client.register_plugin(plugin)
        settings = config(model, tmp_path / "in.zarr", tmp_path / "out.zarr", objects=objects)
        settings = PredictConfig.from_dict(
            {**settings.to_dict(), "scheduler": cluster.scheduler_address, "retries": 0}
        )
        report = workflows.predict(settings, progress=False)
        flaky = str(tmp_path / "flaky")
        with pytest.raises(OSError, match="flaky shared disk"):
            _map_on_cluster(client, 0, _fails_once, [(flaky,)])
        assert _map_on_cluster(client, 1, _fails_once, [(flaky + "2",)]) == ["ok"]
    assert sorted(p.name for p in markers.iterdir()) == ["-2-1-1-", "label_piece"]
    assert report.failed == [] and report.predicted == 4 * 2 * 2
    out = zarr.open_group(tmp_path / "out.zarr", mode="r")
    masks = whole_sections(model, pixels)[0]
    assert np.array_equal(out["labels/mask/0"][...], masks)
    from unet_keras.inference.inference_settings import InstanceConfig
    from unet_keras.inference.instances import label_objects, link_sections
    from unet_keras.io.masks import mask_to_labels

    record, config_ = Segmenter.from_path(model).record, InstanceConfig(**objects)
    sections = [label_objects(mask_to_labels(m, record.mask), config_) for m in masks]
    expected = link_sections(np.stack(sections), config_.min_overlap)
    assert expected.max() > 3 and np.array_equal(out["labels/objects/0"][...], expected)


def _models_loaded() -> int:
    """Models a worker process holds (run on each worker)."""
    from unet_keras.inference.volumes import _worker_segmenter

    return _worker_segmenter.cache_info().currsize


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tta"], "--tta is not available for volumes"),
        (["--overlay"], "--overlay is not available for Zarr volumes"),
        (["--probabilities", "png"], "--probabilities png is not available for Zarr volumes"),
        (["--output", "OUT"], "store named *.zarr"),
    ],
)
def test_volume_flags_that_do_not_apply_are_refused_by_name(
    tmp_path, tiny_model_file, capsys, flags, message
):
    model = tiny_model_file()
    make_volume(tmp_path / "in.zarr", (40, 40))
    output = ["--output", str(tmp_path / "out.zarr")]
    if flags[0] == "--output":
        output, flags = ["--output", str(tmp_path / flags[1])], []
    argv = ["predict", "--model", str(model), "--input", str(tmp_path / "in.zarr"), *output]
    assert main([*argv, *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.zarr").exists()


def test_a_volume_of_another_dtype_than_the_training_images_is_refused(tmp_path, tiny_model_file):
    model = tiny_model_file()
    create_volume(tmp_path / "in.zarr", (40, 40), (32, 32), "uint16")
    with pytest.raises(ValueError, match=r"in\.zarr.*uint16"):
        workflows.predict(
            config(model, tmp_path / "in.zarr", tmp_path / "out.zarr"), progress=False
        )
    assert not (tmp_path / "out.zarr").exists()
