"""ONNX Runtime against TensorFlow: the same model's ONNX export and Keras model predicting
the same ISBI section with the same tiles, on the same cores, in one process.

For each model: `Segmenter.probabilities` of ISBI training section 00 (512x512) through
each runtime, taking turns (`--repeats` times each), medians; the largest difference
of the probabilities; the export's size. Models: the shipped `isbi2012-membranes` (same
padding, 16 filters) and the paper's valid-padding network at 16 and 64 filters with
random weights (speed does not depend on the weights).

    .venv/bin/python bench/onnx_runtime.py [--repeats 5] [--append]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import interleaved_timings, publish

SECTION = Path(__file__).resolve().parents[2] / "shared/data/isbi2012/train/images/00.png"


def random_unet(path: Path, filters: int) -> str:
    """A valid-padding, depth-4 U-Net with seeded random weights, saved; its path."""
    import keras

    from unet_keras.model import build_unet
    from unet_keras.record import MaskConfig, ModelConfig, ModelRecord, NormalizationConfig
    from unet_keras.saving import save_model

    keras.utils.set_random_seed(0)
    config = ModelConfig(filters=filters)
    normalization = NormalizationConfig("standardize", (128.0,), (50.0,), "uint8")
    record = ModelRecord(MaskConfig((0, 255)), normalization, config, (572, 388))
    save_model(build_unet(**config.to_dict()), path, record)
    return str(path)


def main() -> None:
    """Times both runtimes on each model; prints (and with --append records) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--append", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    import numpy as np
    import onnxruntime
    from PIL import Image

    from unet_keras.exports.onnx_export import export_onnx
    from unet_keras.inference.segmenter import Segmenter

    image = np.asarray(Image.open(SECTION))[..., None]
    rows, raw = [], {}
    with tempfile.TemporaryDirectory() as folder:
        models = {
            "isbi2012-membranes (same, 16 filters)": "isbi2012-membranes",
            "valid, 16 filters (random)": random_unet(Path(folder, "v16.keras"), 16),
            "valid, 64 filters, the paper's (random)": random_unet(Path(folder, "v64.keras"), 64),
        }
        for name, model in models.items():
            onnx_file = export_onnx(model, Path(folder, "model.onnx"))
            runtimes = {
                "tensorflow": Segmenter.from_path(model),
                "onnxruntime": Segmenter.from_path(onnx_file),
            }
            outputs = {key: s.probabilities(image) for key, s in runtimes.items()}  # warm-up
            difference = float(np.abs(outputs["tensorflow"] - outputs["onnxruntime"]).max())
            times = interleaved_timings(
                {key: lambda s=s: s.probabilities(image) for key, s in runtimes.items()},
                args.repeats,
            )
            tf_s, ort_s = (statistics.median(times[k]) for k in ("tensorflow", "onnxruntime"))
            raw[name] = times
            rows.append(
                f"| {name} | {tf_s:.3f} s | {ort_s:.3f} s | {tf_s / ort_s:.2f}x | "
                f"{difference:.1e} | {onnx_file.stat().st_size / 2**20:.1f} MiB |"
            )
    publish(
        "ONNX Runtime against TensorFlow: the same model, tiles and cores",
        f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider, default threads). "
        f"Segmenter.probabilities of ISBI section 00 (512x512, default tiles), {args.repeats} "
        f"turns each, interleaved; medians. Raw seconds: {json.dumps(raw)}",
        ["model", "TensorFlow", "ONNX Runtime", "TF / ORT", "largest difference", "export"],
        rows,
        args.append,
    )


if __name__ == "__main__":
    main()
