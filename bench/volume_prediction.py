"""Chunked volume prediction: peak memory against volume size, and Dask workers' speed-up.

Memory: synthetic uint8 volumes of 4 and 16 sections of 4096 x 4096 in 512 x 512 x 1
chunks are predicted with `unet-keras predict`, each in a fresh process; its peak resident
memory (VmHWM) must stay flat, since only a block and its context are ever held, and
section 0 must equal the section predicted whole. Scaling: a volume predicted through a
`dask scheduler` on 127.0.0.1 and one, then two `dask worker --nthreads 1` processes, each
pinned to a core of its own (taskset), after a warm-up that loads the model on every worker.

    .venv/bin/python bench/volume_prediction.py [--append]
    .venv/bin/python bench/volume_prediction.py --size 512 --sections 2 4 --scaling-size 256
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 512


def random_unet(folder: Path) -> Path:
    """The default network (16 filters, depth 4, valid) with seeded weights, saved."""
    import keras

    from unet_keras.model import build_unet
    from unet_keras.record import MaskConfig, ModelConfig, ModelRecord, NormalizationConfig
    from unet_keras.saving import save_model

    keras.utils.set_random_seed(0)
    config = ModelConfig(filters=16)
    record = ModelRecord(
        MaskConfig((0, 255)),
        NormalizationConfig("standardize", (128.0,), (50.0,)),
        config,
        (572, 388),
    )
    save_model(build_unet(**config.to_dict()), folder / "model.keras", record)
    return folder / "model.keras"


def synthetic_volume(path: Path, sections: int, size: int) -> None:
    """A uint8 volume of smooth random blobs, written section by section (bounded memory)."""
    import numpy as np

    from unet_keras.io.ome_zarr import create_volume

    volume = create_volume(path, (sections, size, size), (1, min(CHUNK, size), min(CHUNK, size)))
    rng = np.random.default_rng(0)
    for section in range(sections):
        coarse = rng.uniform(0, 255, (size // 16 + 1, size // 16 + 1))
        volume[section] = np.kron(coarse, np.ones((16, 16)))[:size, :size].astype(np.uint8)


def predict_command(model: Path, volume: Path, output: Path, *flags: str) -> list[str]:
    """The `unet-keras predict` command line for a volume."""
    return [
        sys.executable, "-m", "unet_keras.cli", "predict", "--model", str(model),
        "--input", str(volume), "--output", str(output), *flags,
    ]  # fmt: skip


def memory_run(model: Path, volume: Path, output: Path) -> dict[str, float]:
    """Seconds and peak resident MiB of one `predict` process on a volume."""
    code = (
        "import runpy, sys, resource; sys.argv = sys.argv[1:]\n"
        "try:\n    runpy.run_module('unet_keras.cli', run_name='__main__')\n"
        "except SystemExit as stop:\n    assert not stop.code, stop.code\n"
        "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    started = time.perf_counter()
    command = predict_command(model, volume, output)
    result = subprocess.run(
        [sys.executable, "-c", code, *command[2:]], capture_output=True, text=True, check=True
    )
    seconds = time.perf_counter() - started
    peak = next(line for line in result.stdout.splitlines() if line.startswith("PEAK"))
    return {"seconds": seconds, "peak_mib": int(peak.split()[1]) / 1024}


def section_matches(model: Path, volume: Path, output: Path) -> bool:
    """Whether section 0 of the output equals that section predicted whole."""
    import numpy as np
    import zarr

    from unet_keras.inference.segmenter import Segmenter

    segmenter = Segmenter.from_path(model)
    section = zarr.open_array(volume, mode="r")[0][..., None]
    mask = segmenter.mask(segmenter.labels(segmenter.probabilities(section)))
    return bool(np.array_equal(zarr.open_array(output / "labels/mask/0", mode="r")[0], mask))


def scaling_run(model: Path, volume: Path, warm: Path, workers: int) -> float:
    """Seconds to predict `volume` on `workers` single-core Dask workers, once predicting
    `warm` has loaded the model on each."""
    port = 8786 + workers
    address = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).with_name("dask"))
    processes = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
             "--dashboard-address", ":0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    ]  # fmt: skip
    try:
        for core in range(workers):
            processes.append(
                subprocess.Popen(
                    ["taskset", "-c", str(core), dask, "worker", address, "--nthreads", "1",
                     "--nworkers", "1", "--no-nanny"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)
        from unet_keras.inference.inference_settings import InferenceConfig
        from unet_keras.inference.segmenter import Segmenter
        from unet_keras.inference.volumes import open_job, predict_volume

        # In this process, so that the time is the cluster's, not a client's start-up.
        segmenter = Segmenter.from_path(model)
        for source, name in ((warm, "warm"), (volume, "out")):
            output = str(volume.parent / f"{name}{workers}.zarr")
            job = open_job(str(model), InferenceConfig(), str(source), output, False, None)
            started = time.perf_counter()
            report = predict_volume(segmenter, job, scheduler=address)
            assert not report.failed, report.failed
        return time.perf_counter() - started
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait()


def main() -> None:
    """Runs both measurements and publishes their tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--append", action="store_true", help="append to docs/benchmarks.md")
    parser.add_argument("--size", type=int, default=4096, help="section side (memory)")
    parser.add_argument("--sections", type=int, nargs=2, default=(4, 16))
    parser.add_argument("--scaling-size", type=int, default=2048, help="section side (scaling)")
    parser.add_argument("--scaling-sections", type=int, default=4)
    parser.add_argument(
        "--repeats", type=int, default=2, help="memory runs per volume, taking turns"
    )
    parser.add_argument("--parts", nargs="+", default=("memory", "scaling"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))

    with tempfile.TemporaryDirectory(dir=ROOT) as temporary:
        folder = Path(temporary)
        model = random_unet(folder)
        memory: dict[int, list[dict]] = {sections: [] for sections in args.sections}
        for sections in args.sections if "memory" in args.parts else ():
            synthetic_volume(folder / f"v{sections}.zarr", sections, args.size)
        # Peak memory varies from run to run: the volumes take turns, each run a fresh store.
        for repeat in range(args.repeats if "memory" in args.parts else 0):
            for sections in args.sections:
                volume, output = (
                    folder / f"v{sections}.zarr",
                    folder / f"p{sections}-{repeat}.zarr",
                )
                run = memory_run(model, volume, output)
                if repeat == 0 and sections == args.sections[0]:
                    run["equal"] = section_matches(model, volume, output)
                memory[sections].append(run)
                shutil.rmtree(output)
        seconds = {}
        if "scaling" in args.parts:
            volume, warm = folder / "scaling.zarr", folder / "warm.zarr"
            synthetic_volume(volume, args.scaling_sections, args.scaling_size)
            synthetic_volume(warm, 4, 2 * CHUNK)
            seconds = {workers: scaling_run(model, volume, warm, workers) for workers in (1, 2)}
    print(json.dumps({"memory": memory, "scaling": seconds}))
    if "memory" in args.parts:
        publish_memory(memory, args)
    if "scaling" in args.parts:
        publish_scaling(seconds, args)


def publish_memory(memory: dict[int, list[dict]], args: argparse.Namespace) -> None:
    """The memory table: every run's peak, and the ratio of the largest peaks."""
    from common import publish

    small, large = args.sections
    rows = []
    for sections, runs in memory.items():
        peaks = ", ".join(f"{run['peak_mib']:.0f}" for run in runs)
        seconds = ", ".join(f"{run['seconds']:.0f}" for run in runs)
        equal = [run["equal"] for run in runs if "equal" in run]
        note = f"section 0 equals whole-section prediction: {equal[0]}" if equal else ""
        rows.append(f"| {sections} x {args.size}^2 | {peaks} MiB | {seconds} s | {note} |")
    largest = {sections: max(run["peak_mib"] for run in runs) for sections, runs in memory.items()}
    ratio = largest[large] / largest[small]
    rows.append(f"| largest peak, {large} / {small} sections | {ratio:.2f}x | | |")
    publish(
        "Chunked volume prediction: memory",
        "Default network (16 filters, depth 4, valid padding), `unet-keras predict` on a "
        f"uint8 Zarr volume in {CHUNK} x {CHUNK} x 1 chunks, one process, peak RSS (VmHWM); "
        f"{args.repeats} runs per volume, taking turns, each into a fresh store.",
        ["volume", "peak memory", "time", "note"],
        rows,
        args.append,
    )


def publish_scaling(seconds: dict[int, float], args: argparse.Namespace) -> None:
    """The scaling table: one and two single-core workers."""
    from common import publish

    n = args.scaling_sections
    publish(
        "Chunked volume prediction on Dask: one vs two single-core workers",
        f"Default network; {n} x {args.scaling_size}^2 uint8 volume; `dask scheduler` and "
        "`dask worker --nthreads 1` on 127.0.0.1, each worker pinned to one core (taskset), "
        "model loaded on every worker by a warm-up run first.",
        ["workers", "time", "speed-up"],
        [
            f"| 1 | {seconds[1]:.1f} s | 1.00x |",
            f"| 2 | {seconds[2]:.1f} s | {seconds[1] / seconds[2]:.2f}x |",
        ],
        args.append,
    )


if __name__ == "__main__":
    main()
