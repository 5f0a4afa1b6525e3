"""Accuracy under a fixed training budget on ISBI 2012, scored on held-out sections.

Trains with `train_keras.py` on sections 00-19 of ../shared/data/isbi2012/train (two of
them, chosen by the seed, select the best epoch) for `--max-time` seconds, then scores
the best model on sections 20-23, which training never sees: pixel error, the challenge's
V^Rand, V^Info and pixel error, membrane IoU, adapted Rand error and variation of
information, with and without test-time augmentation, plus a threshold sweep. An
all-cell prediction is the trivial baseline.
`--labelled 0.25` trains on sparse annotations instead: in each training mask only
random horizontal strips covering that fraction of the rows keep their labels, the rest
is marked unlabelled (`--ignore-value`); the held-out sections are scored in full.

    .venv/bin/python bench/isbi_accuracy.py [--max-time 900] [--labelled F] [--quick]
        [--workers N] [--append] [-- TRAIN FLAGS...]
    .venv/bin/python bench/isbi_accuracy.py --rescore RUN_DIR [--quick] [--append]

With `--run-dir`, the run is rerun to resume: the split of the data is kept in
RUN_DIR/bench, so a run killed after hours (the shipped model's, with `--patience`) goes
on where it stopped.

`--rescore` scores a run this benchmark trained earlier (`--run-dir`) again, without
training: for scores added since, or the held-out sections' figures of an older run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "isbi2012" / "train"
HELD_OUT = ("20", "21", "22", "23")
FIGURE = ROOT / "docs" / "isbi_held_out_20.png"  # referenced by README
SHIPPED = "isbi2012-membranes"
UNLABELLED = 128  # the value sparse training masks mark unlabelled pixels with
STRIP = 16  # rows per strip of a sparse mask
SCORE_NAMES = {
    "pixel_error": "pixel error",
    "adapted_rand_error": "adapted Rand error",
    "iou_0": "membrane IoU",
}


def split(
    folder: Path, labelled: float = 1.0, seed: int = 0, held_out: tuple[str, ...] = HELD_OUT
) -> tuple[Path, Path]:
    """Links the training and held-out sections into two data folders under `folder`;
    with `labelled` < 1, writes sparse training masks instead of linking them. A split made
    before (a resumed run's) is kept: the same links, the same masks again."""
    from unet_keras.io.readers import read_mask
    from unet_keras.io.writers import write_image

    parts = {"train": folder / "train20", "held_out": folder / "held_out4"}
    sections = sorted(path.stem for path in (DATA / "images").glob("*.png"))
    wanted = {
        "train": [name for name in sections if name not in held_out],
        "held_out": [name for name in sections if name in held_out],
    }
    for part, target in parts.items():
        made = target / "images"
        names = sorted(path.stem for path in made.iterdir()) if made.is_dir() else None
        if names not in (None, wanted[part]):
            raise ValueError(f"{target} holds another split ({names}); use another --run-dir")
    rng = np.random.default_rng(seed)
    for image in sorted((DATA / "images").glob("*.png")):
        target = parts["held_out" if image.stem in held_out else "train"]
        for kind in ("images", "masks"):
            (target / kind).mkdir(parents=True, exist_ok=True)
            if kind == "masks" and target == parts["train"] and labelled < 1:
                mask = read_mask(DATA / kind / image.name)
                strips = -(-mask.shape[0] // STRIP)
                kept = rng.permutation(strips)[: round(labelled * strips)]
                rows = np.zeros(mask.shape[0], bool)
                for strip in kept:
                    rows[strip * STRIP : (strip + 1) * STRIP] = True
                write_image(target / kind / image.name, np.where(rows[:, None], mask, UNLABELLED))
            elif not (target / kind / image.name).is_symlink():
                (target / kind / image.name).symlink_to(DATA / kind / image.name)
    return parts["train"], parts["held_out"]


# The table's heading: the model's name, the COLUMNS, seconds per section.
HEADER = ["model", "pixel error", "ISBI pixel error", "V^Rand", "V^Info", "membrane IoU",
          "adapted Rand", "VI split", "VI merge", "splits", "merges", "s"]  # fmt: skip
# The table's score columns after the model's name: the key and its format.
COLUMNS = (
    ("pixel_error", ".4f"),
    ("isbi_pixel_error", ".4f"),
    ("v_rand", ".4f"),
    ("v_info", ".4f"),
    ("iou_0", ".3f"),
    ("adapted_rand_error", ".4f"),
    ("vi_split", ".3f"),
    ("vi_merge", ".3f"),
    ("split_errors", ".0f"),
    ("merge_errors", ".0f"),
)


def score_row(name: str, scores: dict, seconds: float | None = None) -> str:
    """One table row of the headline scores; a score the row lacks is left blank."""
    cells = [name, *(format(scores[k], f) if k in scores else "" for k, f in COLUMNS)]
    cells.append("" if seconds is None else f"{seconds:.2f}")
    return "| " + " | ".join(cells) + " |"


def challenge_at(challenge: dict, threshold: float) -> dict:
    """V^Rand and V^Info at `threshold` where the challenge scored it (0.0, 0.1, ..., 1.0)."""
    for entry in challenge["sweep"]:
        if abs(entry["threshold"] - threshold) < 1e-9:
            return {"v_rand": entry["v_rand"], "v_info": entry["v_info"]}
    return {}


def main() -> None:
    """Trains, scores and reports."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-time", type=float, default=900)
    parser.add_argument("--run-dir", help="keep the run here (default: a temporary folder)")
    parser.add_argument("--append", action="store_true", help="append to docs/benchmarks.md")
    parser.add_argument("--figure", action="store_true", help=f"write {FIGURE.name} to docs/")
    parser.add_argument(
        "--labelled", type=float, default=1.0, help="fraction of each training mask labelled"
    )
    parser.add_argument("--quick", action="store_true", help="no test-time augmentation rows")
    parser.add_argument(
        "--held-out", nargs=4, default=HELD_OUT, help="the 4 sections scored (default: 20-23)"
    )
    parser.add_argument(
        "--ship", action="store_true", help=f"make the trained model the shipped {SHIPPED!r}"
    )
    parser.add_argument(
        "--workers", type=int, default=1,
        help="train with this many workers joined over loopback, one core each "
        "(--strategy multiworker; --batch-size stays the global batch)",
    )  # fmt: skip
    parser.add_argument(
        "--rescore", metavar="RUN_DIR", help="score this finished run again; no training"
    )
    parser.add_argument("train_flags", nargs="*", help="extra train_keras.py flags, after --")
    args = parser.parse_args()
    if args.rescore and (args.ship or args.train_flags or args.labelled < 1 or args.workers > 1):
        parser.error("--rescore scores a finished run: no --ship, training flags or workers")
    if args.rescore and not (Path(args.rescore) / "summary.json").is_file():
        parser.error(f"--rescore {args.rescore}: no summary.json there, so no finished run")

    from common import publish

    # A run kept in --run-dir keeps its data there too: a rerun resumes it.
    kept = args.rescore or args.run_dir
    work = Path(kept) / "bench" if kept else Path(tempfile.mkdtemp(prefix="isbi_accuracy_"))
    held_out_names = tuple(args.held_out)
    if args.ship and held_out_names != HELD_OUT:
        parser.error("--ship: the shipped model is trained on sections 00-19 only")
    train, held_out = split(work, args.labelled, held_out=held_out_names)
    run_dir = Path(args.rescore or args.run_dir or work / "run")
    sparse = ["--ignore-value", str(UNLABELLED)] if args.labelled < 1 else []
    command = [
        sys.executable, str(ROOT / "train_keras.py"), "--data", str(train),
        "--run-dir", str(run_dir), "--max-time", str(args.max_time), "--validation", "2",
        *sparse, *args.train_flags,
    ]  # fmt: skip
    if args.rescore:
        args.max_time = json.loads((run_dir / "config.json").read_text())["max_time"]
    else:
        print(" ".join(command), flush=True)
        if args.workers > 1:
            train_workers(command, args.workers)
        else:
            subprocess.run(command, check=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    # `-- --validation 0` trains on all 20 and keeps the last (averaged) weights, unchosen.
    config = json.loads((run_dir / "config.json").read_text())
    validation, keep = config["validation"], config.get("keep", "best")
    kept = "the last weights" + (" (averaged)" if config["weight_average"] else "") + " are kept"
    if summary["threshold"] is None:
        held = f"none held for validation, so {kept}"
        chosen = "none chosen (no validation sections), so 0.5 again"
    else:
        held = f"{validation} of them, drawn by the seed, choose the threshold"
        held += f"; {kept}" if keep == "last" else " and the epoch kept"
        chosen = (
            f"the one chosen after training on the {validation} validation sections by "
            f"{SCORE_NAMES[summary['threshold']['chosen_by']]}"
        )
    rows = score_rows(run_dir, held_out, work, args.figure, args.quick, held_out_names)
    if args.ship:
        remake = f"python bench/isbi_accuracy.py --max-time {args.max_time:g} --ship"
        remake += " -- " + " ".join(args.train_flags) if args.train_flags else ""
        ship(run_dir, command, remake, summary, rows, held)
    flags = " ".join(sparse + args.train_flags) or "defaults"
    if args.rescore:
        flags = f"run {run_dir.name}, seed {config['seed']}, rescored"
    if args.workers > 1:
        flags += f"; {args.workers} single-core workers joined over loopback"
    if args.labelled < 1:
        flags += f"; {args.labelled:.0%} of each training mask labelled, in {STRIP}-row strips"
    # A run rescored may have trained for a number of epochs, without a time budget.
    length = f"{args.max_time:.0f} s" if args.max_time else f"{summary['epochs']} epochs"
    publish(
        f"ISBI 2012 accuracy after {length} of training ({flags})",
        (
            "Scored again (`--rescore`), by the machine named, from a run trained earlier. "
            if args.rescore
            else ""
        )
        + f"Trained on the other 20 sections ({held}), scored on "
        f"{', '.join(held_out_names)}; "
        f"{summary['epochs']} epochs in {summary['wall_seconds']} s "
        f"({summary.get('budget_used', 0):.1%} of the budget), {summary['precision']}, "
        f"{summary['training_images_per_second']} training tiles/s, kept epoch "
        f"{summary.get('kept_epoch', summary['best_epoch'])}. Membrane IoU is class 0's. "
        "Splits and merges: cells cut or joined per section (connected components). "
        "Seconds: evaluation time per 512x512 section (prediction and scoring). "
        "Pixel error: the fraction of pixels misclassified; ISBI pixel error: the "
        "challenge's, 1 - F-score of the cell pixels pooled over the 4 sections, p >= t "
        '(its lowest over 0.10, 0.15, ..., 0.90 is the row "lowest ISBI pixel error here"). '
        "V^Rand and V^Info: the challenge's ranking "
        "scores, foreground-restricted Rand and information theoretic scores after border "
        "thinning, means over the sections (`unet_keras.evaluation.challenge`, a port of "
        "Fiji's); they score the thresholded probabilities, not the objects. The challenge "
        "took each at its best of 0.0, 0.1, ..., 1.0: the row \"challenge's best "
        'thresholds", whose ISBI pixel error is its best of these, p > t as the challenge '
        f"counts. Thresholds: 0.5; {chosen} (the default for "
        "predict, evaluate and export); and the best on these 4 sections themselves (an "
        "optimistic figure, for reference). Watershed objects: `--instances watershed` "
        "(seed height 16) instead of connected components.",
        HEADER,
        rows,
        args.append,
    )


def train_workers(command: list[str], workers: int) -> None:
    """Runs `command` as `workers` workers of one local cluster, worker i pinned to core i."""
    from common import free_port

    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(workers)]}
    running = []
    for index in range(workers):
        task = {"type": "worker", "index": index}
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": task})}
        pinned = ["taskset", "-c", str(index), *command, "--strategy", "multiworker"]
        running.append(subprocess.Popen(pinned, env=env))
    # A worker that fails leaves the others waiting on its collectives: stop them too.
    while None in (codes := [process.poll() for process in running]):
        if any(codes):
            for process in running:
                process.kill()
        time.sleep(1)
    if any(codes):
        raise RuntimeError(f"a worker failed: exit statuses {codes}")


def score_rows(
    run_dir: Path,
    held_out: Path,
    work: Path,
    figure: bool,
    quick: bool = False,
    names: tuple[str, ...] = HELD_OUT,
) -> list[str]:
    """The table's rows: the trivial answer, then the model with and without TTA at 0.5, at
    the threshold chosen on validation (also with watershed objects), at the best
    threshold on the held-out sections and at the best by the challenge's pixel error, and
    the challenge's scores at their own best thresholds."""
    from unet_keras.evaluation.challenge import challenge_scores
    from unet_keras.evaluation.report import evaluate_path
    from unet_keras.evaluation.scores import (
        isbi_pixel_errors,
        mean_scores,
        pixel_counts,
        segmentation_scores,
    )
    from unet_keras.inference.inference_settings import InstanceConfig
    from unet_keras.inference.segmenter import Segmenter
    from unet_keras.saving import read_record

    truths = [np.asarray(_read(held_out / "masks" / f"{n}.png")) == 255 for n in names]
    trivial = mean_scores([segmentation_scores(np.ones_like(t, int), t, 2) for t in truths])
    counts = sum(pixel_counts(np.ones(t.shape), t, [0.5]) for t in truths)
    trivial["isbi_pixel_error"] = float(isbi_pixel_errors(counts)[0])
    every_cell = challenge_scores([np.ones(t.shape) for t in truths], truths, 0.5)
    trivial.update(challenge_at(every_cell, 0.5))
    rows = [score_row("all cell (trivial)", trivial)]
    record = read_record(run_dir)
    stored = record.threshold_value
    # TTA averages the flips and rotations the model was trained with: none, no TTA rows.
    for tta in (False,) if quick or record.symmetries == "none" else (False, True):
        segmenter = Segmenter.from_path(run_dir, tta=tta)
        started = time.perf_counter()
        output = work / f"evaluation_tta{int(tta)}"
        report = evaluate_path(segmenter, held_out, output=output, sweep=True)
        seconds = (time.perf_counter() - started) / len(names)
        name = "U-Net + TTA" if tta else "U-Net"
        by_threshold = {round(entry["threshold"], 2): entry for entry in report["sweep"]}
        challenge = report["challenge"]
        at_half = {**by_threshold[0.5], **challenge_at(challenge, 0.5)}
        rows.append(score_row(f"{name}, threshold 0.5", at_half))
        # Validation chooses among the sweep's thresholds; a threshold set by hand may not be.
        at_stored = by_threshold.get(round(stored, 2), {})
        isbi = {"isbi_pixel_error": at_stored.get("isbi_pixel_error", float("nan"))}
        at_own = {key: challenge["at_threshold"][key] for key in ("v_rand", "v_info")}
        how = "chosen on validation" if record.threshold else "none chosen: the default"
        chosen = f"{name}, threshold {stored:.2f} ({how})"
        rows.append(score_row(chosen, {**report["mean"], **isbi, **at_own}, seconds))
        watershed = InstanceConfig(instances="watershed")
        objects = evaluate_path(segmenter, held_out, objects=watershed)["mean"]
        rows.append(
            score_row(f"{name}, threshold {stored:.2f}, watershed objects", {**objects, **isbi})
        )
        best = report["best_threshold"]
        best = {**best, **challenge_at(challenge, best["threshold"])}
        rows.append(score_row(f"{name}, threshold {best['threshold']:.2f} (best here)", best))
        lowest = by_threshold[round(report["isbi_pixel_error"]["threshold"], 2)]
        lowest = {**lowest, **challenge_at(challenge, lowest["threshold"])}
        label = f"{name}, threshold {lowest['threshold']:.2f} (lowest ISBI pixel error here)"
        rows.append(score_row(label, lowest))
        sections = [image["challenge"]["v_rand"] for image in report["images"]]
        rows.append(challenge_row(name, challenge, sections))
        if figure and not tta and names == HELD_OUT:
            write_figure(segmenter, held_out)
    return rows


def challenge_row(name: str, challenge: dict, sections: list[float]) -> str:
    """The row of the challenge's scores, each at its own best threshold of 0.0, ..., 1.0,
    naming each section's V^Rand at that threshold (their mean is the stack's)."""
    names = {"v_rand": "V^Rand", "v_info": "V^Info", "isbi_pixel_error": "pixel error"}
    where = ", ".join(f"{names[key]} at {challenge[key]['threshold']:.1f}" for key in names)
    each = ", ".join(f"{v_rand:.3f}" for v_rand in sections)
    scores = {key: challenge[key]["value"] for key in names}
    return score_row(
        f"{name}, challenge's best thresholds ({where}; V^Rand by section {each})", scores
    )


def ship(
    run_dir: Path, command: list[str], remake: str, summary: dict, rows: list[str], held: str
) -> None:
    """Writes the run's kept model, without optimizer state, as the shipped model, and
    beside it how it was made and scored, and the data's terms."""
    from common import machine_description

    from unet_keras.io.atomic import atomic_path
    from unet_keras.pretrained_models import HERE
    from unet_keras.saving import load_model, save_model

    model, record = load_model(run_dir)
    save_model(model, HERE / f"{SHIPPED}.keras", record)
    training = {
        "data": f"ISBI 2012 training sections 00-19 (../shared/data/isbi2012/train); {held}",
        "command": " ".join(Path(part).name if "/" in part else part for part in command),
        "remake": remake,
        "summary": {k: v for k, v in summary.items() if k not in ("run_dir",)},
        "machine": machine_description(),
        "made": time.strftime("%Y-%m-%d"),
    }
    record_of_scores = {
        "held_out": "ISBI 2012 sections 20-23, never seen in training",
        "columns": " | ".join(HEADER),  # the model card's table heading
        "table": rows,
    }
    terms = (
        "ISBI 2012 EM data (Drosophila first instar larva ventral nerve cord, serial-section "
        "TEM, 4 x 4 x 50 nm): free to use for generating or testing non-commercial image "
        "segmentation software; publications must cite TrakEM2 and Cardona A. et al. 2010, "
        "PLoS Biol 8(10): e1000502, and the challenge paper, Arganda-Carreras I. et al. 2015, "
        "Front. Neuroanat. 9:142."
    )
    described = {"training": training, "scores": record_of_scores, "data_terms": terms}
    with atomic_path(HERE / f"{SHIPPED}.json") as temporary:
        temporary.write_text(json.dumps(described, indent=2) + "\n")
    size = (HERE / f"{SHIPPED}.keras").stat().st_size
    print(f"shipped {SHIPPED}: {size / 2**20:.1f} MiB")


def write_figure(segmenter, held_out: Path) -> None:
    """`unet-keras evaluate`'s figure for section 20, its central 256 x 256 (kept small)."""
    from unet_keras.evaluation.figures import evaluation_figure
    from unet_keras.io.readers import read_image
    from unet_keras.io.writers import write_image

    image = read_image(held_out / "images" / "20.png")
    truth = (_read(held_out / "masks" / "20.png") == 255).astype(np.int32)
    predicted = segmenter.labels(segmenter.probabilities(image))
    crop = np.s_[128:384, 128:384]
    write_image(FIGURE, evaluation_figure(image[crop], truth[crop], predicted[crop]))


def _read(path: Path) -> np.ndarray:
    """Reads a mask file."""
    from unet_keras.io.readers import read_mask

    return read_mask(path)


if __name__ == "__main__":
    main()
