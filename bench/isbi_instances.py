"""Cells as objects on ISBI 2012: connected components against seeded watershed, and
linking the 30 test sections into 3D objects.

Takes a run trained on sections 00-19 (`bench/isbi_accuracy.py --run-dir RUN`). The
watershed's seed height is chosen on the run's own validation sections (by adapted Rand
error, the ISBI ranking score); every setting is then scored on the held-out sections
20-23, so the table shows the trade-off, not only the chosen point. Then the model
predicts the 30 unlabelled test sections, and the time to label and to link them is
measured per section.

    .venv/bin/python bench/isbi_instances.py --run-dir RUN [--append] [--figure]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ISBI = ROOT.parent / "shared" / "data" / "isbi2012"
HELD_OUT = ("20", "21", "22", "23")
SEED_HEIGHTS = (1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0)
FIGURE = ROOT / "docs" / "isbi_objects_20.png"  # referenced by README
KEYS = ("adapted_rand_error", "vi_split", "vi_merge", "objects", "split_errors", "merge_errors")


def predicted_classes(segmenter, names: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(predicted classes, truth classes) of the named training sections."""
    from unet_keras.io.masks import mask_to_labels
    from unet_keras.io.readers import read_image, read_mask

    pairs = []
    for name in names:
        image = read_image(ISBI / "train" / "images" / f"{name}.png")
        truth = mask_to_labels(read_mask(ISBI / "train" / "masks" / f"{name}.png"),
                               segmenter.mask_config)  # fmt: skip
        pairs.append((segmenter.labels(segmenter.probabilities(image)), truth))
    return pairs


def mean_scores_of(pairs, method: str, seed_height: float = 2.0) -> dict[str, float]:
    """Mean scores of the objects `method` finds in each predicted section."""
    from unet_keras.evaluation.scores import mean_scores, segmentation_scores
    from unet_keras.inference.instances import instance_labels

    scores = []
    for predicted, truth in pairs:
        objects = instance_labels(predicted, method, seed_height)
        scores.append(segmentation_scores(predicted, truth, 2, objects))
    return mean_scores(scores)


def row(name: str, scores: dict[str, float]) -> str:
    """One table row."""
    cells = [f"{scores[key]:.4f}" if key.startswith(("adapted", "vi")) else f"{scores[key]:.1f}"
             for key in KEYS]  # fmt: skip
    return "| " + " | ".join([name, *cells]) + " |"


def linking_times(segmenter) -> dict[str, float]:
    """Median seconds per test section to label (cc, watershed) and to link the stack."""
    from unet_keras.inference.instances import instance_labels, link_sections
    from unet_keras.io.readers import read_image

    pages = [read_image(path) for path in sorted((ISBI / "test" / "images").glob("*.png"))]
    classes = [segmenter.labels(segmenter.probabilities(page)) for page in pages]
    times: dict[str, float] = {"sections": len(pages)}
    for method in ("cc", "watershed"):
        per_section, labels = [], []
        for section in classes:
            started = time.perf_counter()
            labels.append(instance_labels(section, method))
            per_section.append(time.perf_counter() - started)
        times[f"label {method}"] = statistics.median(per_section)
        started = time.perf_counter()
        linked = link_sections(np.stack(labels), 0.5)
        times[f"link {method}"] = (time.perf_counter() - started) / len(pages)
        times[f"objects per section {method}"] = statistics.mean(int(x.max()) for x in labels)
        times[f"3D objects {method}"] = int(linked.max())
    return times


def write_figure(segmenter, seed_height: float) -> None:
    """`unet-keras evaluate --instances watershed`'s objects figure for section 20, its
    central 256 x 256."""
    from unet_keras.evaluation.figures import instance_figure
    from unet_keras.inference.instances import instance_labels
    from unet_keras.io.readers import read_image
    from unet_keras.io.writers import write_image

    [(predicted, truth)] = predicted_classes(segmenter, ["20"])
    image = read_image(ISBI / "train" / "images" / "20.png")
    crop = np.s_[128:384, 128:384]
    objects = instance_labels(predicted, "watershed", seed_height)
    figure = instance_figure(image[crop], instance_labels(truth)[crop], objects[crop])
    write_image(FIGURE, figure)


def main() -> None:
    """Chooses the seed height on validation, scores every setting held out, times linking."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True, help="a run trained on sections 00-19")
    parser.add_argument("--append", action="store_true", help="append to docs/benchmarks.md")
    parser.add_argument("--figure", action="store_true", help=f"write {FIGURE.name} to docs/")
    args = parser.parse_args()

    from common import publish

    from unet_keras.inference.segmenter import Segmenter

    run = Path(args.run_dir)
    segmenter = Segmenter.from_path(run)
    summary = json.loads((run / "summary.json").read_text())
    validation = [Path(name).stem for name in summary["validation_images"]]
    chosen_on = predicted_classes(segmenter, validation)
    by_height = {h: mean_scores_of(chosen_on, "watershed", h) for h in SEED_HEIGHTS}
    chosen = min(SEED_HEIGHTS, key=lambda h: by_height[h]["adapted_rand_error"])
    held_out = predicted_classes(segmenter, list(HELD_OUT))
    rows = [row("connected components", mean_scores_of(held_out, "cc"))]
    for height in SEED_HEIGHTS:
        mark = " (chosen on validation)" if height == chosen else ""
        rows.append(row(f"watershed, seed height {height:g}{mark}",
                        mean_scores_of(held_out, "watershed", height)))  # fmt: skip
    times = linking_times(segmenter)
    if args.figure:
        write_figure(segmenter, chosen)
    publish(
        "ISBI 2012 cells as objects: connected components against watershed",
        f"Model: {run} ({summary['epochs']} epochs, {summary['wall_seconds']} s on sections "
        f"00-19), threshold {segmenter.threshold:.2f}. Seed height chosen on its validation "
        f"sections {', '.join(validation)} by adapted Rand error; all rows scored on the "
        "held-out sections 20-23, mean per section (objects, split and merge errors: counts "
        "per section). Minimum object size 16 px. Linking the "
        f"{times['sections']} test sections (min overlap 0.5), seconds per section: label cc "
        f"{times['label cc']:.3f}, watershed {times['label watershed']:.3f}; link "
        f"{times['link cc']:.4f} (cc) and {times['link watershed']:.4f} (watershed); "
        f"{times['objects per section cc']:.0f} / {times['objects per section watershed']:.0f}"
        f" objects per section became {times['3D objects cc']} / "
        f"{times['3D objects watershed']} 3D objects.",
        ["objects by", "adapted Rand", "VI split", "VI merge", "objects", "splits", "merges"],
        rows,
        args.append,
    )


if __name__ == "__main__":
    main()
