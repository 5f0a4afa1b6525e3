"""How the local server loads and runs a version: TF Serving's session path against TF2's
object-graph loader, on the same export, in fresh processes, alternating.

For each path, `--rounds` fresh processes each load the version (seconds, and resident
memory added by the load and the first call) and run `serving_default` on one 512x512
ISBI section `--calls` times (median seconds); the two paths' outputs are compared bit
for bit. The export is the shipped model's (16 filters, same padding) unless --model names
another.

    .venv/bin/python bench/serving_path.py [--rounds 3] [--calls 10] [--append]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import publish

ROOT = Path(__file__).resolve().parents[1]
SECTION = ROOT.parent / "shared" / "data" / "isbi2012" / "train" / "images" / "00.png"

# Runs in a fresh process: argv = path (session | tf2), version folder, calls, outputs.npz.
_PROBE = r"""
import resource, sys, time
import numpy as np
from PIL import Image
import tensorflow as tf

path, version, calls, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
section = sys.argv[5]
image = np.asarray(Image.open(section))[None, ..., None]

def resident():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024

before = resident()
start = time.perf_counter()
if path == "session":
    from unet_keras.server.versions import LoadOptions, Servable
    servable = Servable(1, __import__("pathlib").Path(version), LoadOptions(warmup=False))
    signature = servable.signature("serving_default")
    def run():
        return servable.run(signature, {"image": image}, ["probabilities", "mask"])
else:
    loaded = tf.saved_model.load(version)
    function = loaded.signatures["serving_default"]
    def run():
        return {k: v.numpy() for k, v in function(image=tf.constant(image)).items()}
load = time.perf_counter() - start
first_start = time.perf_counter()
outputs = run()
first = time.perf_counter() - first_start
grown = resident() - before
times = []
for _ in range(calls):
    start = time.perf_counter()
    outputs = run()
    times.append(time.perf_counter() - start)
np.savez(out, **outputs)
print(load, first, grown, float(np.median(times)))
"""


def main() -> None:
    """Measures both paths, prints (and with --append records) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="isbi2012-membranes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--append", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        subprocess.run(
            [sys.executable, "-m", "unet_keras.cli", "export", "--model", args.model,
             "--base-path", str(folder / "base"), "--no-warmup"],
            check=True, capture_output=True,
        )  # fmt: skip
        version = folder / "base" / "1"
        figures: dict[str, list[list[float]]] = {"session": [], "tf2": []}
        for round_ in range(args.rounds):
            for path in ("session", "tf2") if round_ % 2 == 0 else ("tf2", "session"):
                out = folder / f"{path}.npz"
                probe = [sys.executable, "-c", _PROBE, path, str(version), str(args.calls)]
                result = subprocess.run(
                    [*probe, str(out), str(SECTION)], check=True, capture_output=True,
                    text=True, env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"},
                )  # fmt: skip
                figures[path].append([float(x) for x in result.stdout.split()[-4:]])
        import numpy as np

        with np.load(folder / "session.npz") as one, np.load(folder / "tf2.npz") as other:
            equal = all(np.array_equal(one[k], other[k]) for k in one.files)

    def median(path: str, column: int) -> float:
        return statistics.median(row[column] for row in figures[path])

    rows = [
        f"| {name} | {median(path, 0):.2f} s | {median(path, 1):.2f} s | "
        f"{median(path, 3):.3f} s | +{median(path, 2):.0f} MiB |"
        for name, path in (
            ("TF Serving's session path (the server's)", "session"),
            ("TF2's tf.saved_model.load", "tf2"),
        )
    ]
    publish(
        "The server's loading path: TF Serving's session against TF2's loader",
        f"Export of {args.model}, one 512x512 ISBI section; {args.rounds} fresh processes per "
        f"path, alternating; medians. Outputs equal bit for bit: {equal}. Raw: "
        f"{json.dumps(figures)}",
        ["path", "load", "first call", f"call (median of {args.calls})", "memory added"],
        rows,
        args.append,
    )


if __name__ == "__main__":
    main()
