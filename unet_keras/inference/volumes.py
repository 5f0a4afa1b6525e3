"""Predicting chunked volumes block by block: in this process, or on a Dask cluster.

A block is a run of whole chunks of one chunk's sections; each section's part of it is
predicted with the whole section's own tiles and their context, read from neighbouring
chunks and mirrored only at the volume's true border (`Segmenter.region_probabilities`),
so the result equals predicting each section whole, bit for bit at one tile a call
(with more, TensorFlow's own CPU kernels may round a few probabilities 1 ulp apart), and
memory is bounded by the block and tile sizes, never the volume. A model with context
(`ModelRecord.context_sections` K > 0) reads sections z-K..z+K of the region as channels,
mirrored at the volume's first and last sections. A block's results are
written, then the block is marked done in the store's records (`.unet_keras/progress`):
a run that is killed and started again skips the blocks marked done and writes the others.

On a cluster (`scheduler` an address, or `workers` local processes) each task is a block;
the tasks carry the model's path and the stores' paths, never arrays or a Keras object,
and each worker process loads the model once (`_worker_segmenter`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from unet_keras.geometry import plan_blocks
from unet_keras.inference.inference_settings import InferenceConfig, InstanceConfig
from unet_keras.inference.predict import PredictionReport
from unet_keras.inference.segmenter import Segmenter
from unet_keras.inference.volume_objects import ObjectsJob, TaskMap, label_pieces
from unet_keras.io.context import context_indices
from unet_keras.io.ome_zarr import (
    LEVEL,
    PROGRESS,
    OutputImage,
    VolumeInput,
    create_output,
    is_finished,
    mark_finished,
    open_volume,
)
from unet_keras.io.pyramid import build_pyramids
from unet_keras.io.sample import DataError

log = logging.getLogger(__name__)

# Rows and columns of a block by default: the default tiles' output step, so that each
# block of 512-pixel chunks is one tile's output (rounded up to whole chunks).
DEFAULT_BLOCK = 512
# Times a cluster task that raised is run again (a lost worker's tasks are rerun anyway).
DEFAULT_RETRIES = 3
# The output store's images: the input's pixels at the root, the label images under
# labels/ (the OME-Zarr way), the probabilities an image of their own.
IMAGE, MASK, OBJECTS, PROBABILITIES = "", "labels/mask", "labels/objects", "probabilities"


@dataclasses.dataclass
class VolumeReport(PredictionReport):
    """What `predict_volume` wrote: blocks predicted now, and blocks found already done."""

    predicted: int = 0
    skipped: int = 0


@dataclasses.dataclass(frozen=True)
class VolumeJob:
    """Everything a worker needs to predict blocks: paths and settings, all picklable."""

    model: str
    inference: dict[str, Any]
    source: VolumeInput
    output: str
    probabilities: bool
    sections: tuple[tuple[int, int], ...]
    rows: tuple[tuple[int, int], ...]
    cols: tuple[tuple[int, int], ...]

    @property
    def blocks(self) -> tuple[int, int, int]:
        """Blocks along the sections, rows and columns."""
        return len(self.sections), len(self.rows), len(self.cols)


def plan_job(
    model: str,
    inference: InferenceConfig,
    source: VolumeInput,
    output: str,
    probabilities: bool,
    block: int | None,
) -> VolumeJob:
    """The blocks of `source`: whole chunks, `block` rows and columns (rounded up)."""
    sections, height, width = source.shape
    sections_chunk, rows_chunk, cols_chunk = source.chunks
    block = block or DEFAULT_BLOCK
    return VolumeJob(
        model=str(Path(model).resolve()),
        inference=inference.to_dict(),
        source=source,
        output=str(Path(output).resolve()),
        probabilities=probabilities,
        sections=tuple(plan_blocks(sections, sections_chunk, sections_chunk)),
        rows=tuple(plan_blocks(height, rows_chunk, block)),
        cols=tuple(plan_blocks(width, cols_chunk, block)),
    )


def predict_volume(
    segmenter: Segmenter,
    job: VolumeJob,
    *,
    scheduler: str | None = None,
    workers: int = 1,
    objects: InstanceConfig | None = None,
    progress: bool = False,
    retries: int = DEFAULT_RETRIES,
) -> VolumeReport:
    """Predicts every block of `job` not yet done into its output store.

    With neither `scheduler` nor `workers` above 1, the blocks run in this process with
    `segmenter`; otherwise on the Dask cluster at `scheduler`, or on `workers` local worker
    processes, each of which loads the model from `job.model`; a task whose worker is
    lost is run again elsewhere (distributed does so), one that raises up to `retries`
    times more. `objects` with `instances` set also labels the objects once every block is
    done, in tasks on the same cluster (`label_volume`). Then each image's coarser levels
    are built, their blocks tasks on the same cluster too (`build_pyramids`).
    """
    _check_job(segmenter, job)
    objects = objects if objects is not None and objects.instances else None
    mask_dtype = str(segmenter.mask(np.zeros((1, 1), np.int32)).dtype)
    images = [
        OutputImage(IMAGE, job.source.dtype),
        OutputImage(MASK, mask_dtype, label=True, classes=segmenter.record.mask.class_values),
    ]
    if job.probabilities:
        images.append(OutputImage(PROBABILITIES, "float32", segmenter.classes))
    if objects is not None:
        images.append(OutputImage(OBJECTS, "uint32", label=True))
    settings = _settings(segmenter, job)
    if objects is not None:
        settings["objects"] = objects.to_dict()
    resumed = create_output(job.output, job.source, images, job.blocks, settings)
    todo = _blocks_to_do(job) if resumed else list(np.ndindex(job.blocks))
    report = VolumeReport(skipped=int(np.prod(job.blocks)) - len(todo))
    report.written = [Path(job.output, image.name) for image in images[1:]]
    if report.skipped:
        log.info("%s: %d blocks already done, %d to go", job.output, report.skipped, len(todo))
    bar = tqdm(total=len(todo), disable=not progress, unit="block", desc=job.source.name)
    with contextlib.ExitStack() as stack:  # the cluster serves the labelling too
        run: TaskMap = _map_here
        with bar:
            if scheduler is None and workers <= 1:
                _run_here(segmenter, job, todo, report, bar)
            else:
                client = stack.enter_context(_cluster(scheduler, workers))
                run = functools.partial(_map_on_cluster, client, retries)
                _run_on_cluster(client, job, todo, report, bar, retries)
        if not report.failed:
            if objects is not None:
                label_volume(segmenter, job, objects, run)
            build_pyramids(job.output, images, run)
    return report


def label_volume(
    segmenter: Segmenter, job: VolumeJob, objects: InstanceConfig, run: TaskMap | None = None
) -> None:
    """Labels each section's objects from its mask (ids 1..n per section; with
    `link_sections` 3D objects numbered across the volume), in tasks that `run` maps
    (default: here): "cc" block by block, "watershed" section by section, merged into the
    labels of each section labelled whole (`label_pieces`). Marked finished at the end: a
    rerun redoes it otherwise."""
    if is_finished(job.output, OBJECTS):
        return
    pieces = ObjectsJob(
        output=job.output,
        mask_path=f"{MASK}/{LEVEL}",
        objects_path=f"{OBJECTS}/{LEVEL}",
        mask=segmenter.record.mask,
        objects=objects,
        shape=job.source.shape,
        stacked=job.source.has_sections,
        sections=job.sections,
        rows=job.rows,
        cols=job.cols,
    )
    label_pieces(pieces, run or _map_here)
    mark_finished(job.output, OBJECTS)


def _check_job(segmenter: Segmenter, job: VolumeJob) -> None:
    """A DataError naming the volume when the model cannot predict it."""
    channels, k = segmenter.record.section_channels, segmenter.context_sections
    if channels != 1:
        raise DataError(
            f"{job.source.name}: volumes hold one channel, but the model takes {channels}"
        )
    if k and not job.source.has_sections:
        raise DataError(
            f"{job.source.name}: a 2D volume (no z axis), but the model sees {k} section(s) "
            "above and below each one (context_sections); give it a volume with sections"
        )
    probe = np.zeros((1, 1, 2 * k + 1), job.source.dtype)
    segmenter._check_image(probe, job.source.name)  # the dtype the model was trained on
    if segmenter.tta:
        raise DataError(f"{job.source.name}: --tta is not available for volumes")


def _settings(segmenter: Segmenter, job: VolumeJob) -> dict[str, Any]:
    """What makes two runs the same prediction, stored with the output to resume safely."""
    return json.loads(
        json.dumps(
            {
                "input": job.source.name,
                "shape": job.source.shape,
                "model": job.model,
                "record": segmenter.record.to_dict(),
                "inference": job.inference,
                "threshold": segmenter.threshold,
                "probabilities": job.probabilities,
                "blocks": [job.sections, job.rows, job.cols],
            }
        )
    )


def _blocks_to_do(job: VolumeJob) -> list[tuple[int, ...]]:
    """The blocks not marked done in the output's progress array."""
    import zarr

    done = zarr.open_array(job.output, path=PROGRESS, mode="r")[...]
    return [tuple(int(i) for i in index) for index in np.argwhere(done == 0)]


def _run_here(
    segmenter: Segmenter,
    job: VolumeJob,
    todo: list[tuple[int, ...]],
    report: VolumeReport,
    bar: tqdm,
) -> None:
    """Predicts the blocks one after the other in this process."""
    source = job.source.open()
    for block in todo:
        predict_block(segmenter, job, block, source)
        report.predicted += 1
        bar.update()


def _run_on_cluster(
    client: Any,
    job: VolumeJob,
    todo: list[tuple[int, ...]],
    report: VolumeReport,
    bar: tqdm,
    retries: int,
) -> None:
    """One task per block on a Dask cluster; a failed block is reported, the rest go on."""
    from distributed import as_completed

    futures = {
        client.submit(
            run_block, job, block, key=f"unet-block-{_key(job, block)}", retries=retries
        ): block
        for block in todo
    }
    for future in as_completed(futures):
        try:
            future.result()
            report.predicted += 1
        except Exception as error:  # the worker's error, named by its block
            report.failed.append((f"block {futures[future]}", f"{error}"))
            log.error("%s: block %s: %s", job.output, futures[future], error)
        bar.update()


@contextlib.contextmanager
def _cluster(scheduler: str | None, workers: int) -> Iterator[Any]:
    """A client of the Dask cluster at `scheduler`, or of `workers` local processes."""
    from distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:  # the cluster closes after its client
        if scheduler is None:
            stack.enter_context(environment_restored())
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=":0",
                )
            )
            client = stack.enter_context(Client(cluster))
        else:
            client = stack.enter_context(Client(scheduler))
        log.info("Dask dashboard: %s", client.dashboard_link)
        yield client


def _map_here(function: Any, arguments: list[tuple[Any, ...]]) -> list[Any]:
    """Runs `function` on each argument tuple in this process."""
    return [function(*args) for args in arguments]


def _map_on_cluster(
    client: Any, retries: int, function: Any, arguments: list[tuple[Any, ...]]
) -> list[Any]:
    """Runs `function` on each argument tuple as a task on the cluster; the results in
    order, or the first task's error once its retries are spent."""
    futures = [client.submit(function, *args, retries=retries, pure=False) for args in arguments]
    return client.gather(futures)


@contextlib.contextmanager
def environment_restored() -> Iterator[None]:
    """Puts os.environ back as it was on leaving.

    distributed's nanny sets OMP_NUM_THREADS=1 and MALLOC_TRIM_THRESHOLD_ (meant for its
    workers) in this process's own environment too, where they stay: TensorFlow run here
    afterwards, or in a process started from here, then trains several times slower.
    """
    saved = dict(os.environ)
    try:
        yield
    finally:
        for name in set(os.environ) - set(saved):
            del os.environ[name]
        os.environ.update(saved)


def _key(job: VolumeJob, block: tuple[int, ...]) -> str:
    """A task key unique to this output and block, readable on the dashboard."""
    return f"{Path(job.output).name}-{'-'.join(map(str, block))}-{abs(hash(job.output)):x}"


def run_block(job: VolumeJob, block: tuple[int, ...]) -> tuple[int, ...]:
    """A worker's task: predicts one block with the process's model; returns the block."""
    predict_block(_worker_segmenter(job.model, json.dumps(job.inference)), job, block)
    return block


@functools.lru_cache(maxsize=1)
def _worker_segmenter(model: str, inference: str) -> Segmenter:
    """The model of this worker process, loaded once from the path every worker reads."""
    settings = InferenceConfig.from_dict(json.loads(inference))
    return Segmenter.from_path(model, **settings.segmenter_options())


def predict_block(
    segmenter: Segmenter, job: VolumeJob, block: tuple[int, ...], source: Any = None
) -> None:
    """Predicts one block, writes its results and its input pixels, then marks it done."""
    import zarr

    source = job.source.open() if source is None else source
    sections, rows, cols = job.sections[block[0]], job.rows[block[1]], job.cols[block[2]]
    shape = job.source.shape[1:]
    maps, pixels = [], []
    k, count = segmenter.context_sections, job.source.shape[0]
    for section in range(*sections):

        def read(top: int, bottom: int, left: int, right: int, section: int = section):
            # With context, sections z-K..z+K (mirrored at the volume's ends) as channels.
            spans = (top, bottom), (left, right)
            parts = [
                job.source.read(source, z, *spans) for z in context_indices(count, section, k)
            ]
            return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)

        maps.append(
            segmenter.region_probabilities(
                read, shape, rows, cols, f"{job.source.name}[{section}]"
            )
        )
        pixels.append(job.source.read(source, section, rows, cols)[..., 0])
    probabilities, pixels = np.stack(maps), np.stack(pixels)  # (sections, h, w[, classes])
    masks = np.stack([segmenter.mask(segmenter.labels(p)) for p in probabilities])
    where = (slice(*rows), slice(*cols))
    if job.source.has_sections:
        where = (slice(*sections), *where)
    else:
        masks, probabilities, pixels = masks[0], probabilities[0], pixels[0]
    output = zarr.open_group(job.output, mode="r+")
    output[LEVEL][where] = pixels
    output[f"{MASK}/{LEVEL}"][where] = masks
    if job.probabilities:
        output[f"{PROBABILITIES}/{LEVEL}"][(slice(None), *where)] = np.moveaxis(
            probabilities, -1, 0
        )
    output[PROGRESS][block] = 1


def open_job(
    model: str,
    inference: InferenceConfig,
    volume: str,
    output: str,
    probabilities: bool,
    block: int | None,
) -> VolumeJob:
    """Reads the volume's description and plans its blocks."""
    return plan_job(model, inference, open_volume(volume), output, probabilities, block)
