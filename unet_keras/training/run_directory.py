"""The run directory: everything a training run writes, each file atomically.

    config.json     the resolved settings (what the defaults and the data decided)
    last.keras      the model after the last completed epoch, with its optimizer state
    best.keras      the model the run keeps (--keep): at the end, the last weights (their
                    average); with --keep best, the best validation pixel error so far
    state.json      the last completed epoch, the best score, time spent (for resume)
    log.csv         one row of losses and metrics per epoch
    tensorboard/    TensorBoard scalars and, each epoch, input | truth | prediction images
    summary.json    the final record: best validation metrics, epochs, time, images/s,
                    and the threshold chosen on the validation images

Running the same command again after a crash (even SIGKILL) continues from the last
completed epoch: `state.json` is written after `last.keras`, so it never points past a
model that exists. In a cluster (`--strategy multiworker`) the chief writes the run
directory, every other worker a copy in `worker-N/`, and all resume from the chief's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from unet_keras.io.atomic import atomic_path
from unet_keras.training import distribute

# Settings that may change between a run and its resumption: the run's length, calibration
# (which follows training) and the CPU kernels (the same arithmetic, differently ordered).
RESUMABLE_CHANGES = ("epochs", "max_time", "patience", "calibrate_by", "onednn")


class RunDirectory:
    """The files of one run, each written atomically."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @classmethod
    def for_this_worker(cls, path: str | os.PathLike) -> RunDirectory:
        """Where this process writes: the chief `path`, other workers `path/<task>-<index>`.

        Every worker keeps its own copy of the run's files (which also shows that the
        workers stay in step), but only the chief's are the run's.
        """
        if distribute.is_chief():
            return cls(path)
        kind, index = distribute.worker_task()
        return cls(Path(path) / f"{kind}-{index}")

    def file(self, name: str) -> Path:
        """Path of one file of the run."""
        return self.path / name

    def write_json(self, name: str, content: dict[str, Any]) -> None:
        """Writes a JSON file of the run atomically."""
        with atomic_path(self.file(name)) as temporary:
            temporary.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")

    def read_json(self, name: str) -> dict[str, Any] | None:
        """Reads a JSON file of the run, or None when it does not exist."""
        path = self.file(name)
        return json.loads(path.read_text()) if path.exists() else None

    def state(self, batch_size: int) -> dict[str, Any]:
        """The state of the run so far (a new run's when there is none)."""
        return self.read_json("state.json") or {
            "epoch": 0,
            "best": None,
            "best_epoch": None,
            "best_logs": {},
            "seconds": 0.0,
            "images": 0,
            "batch_size": batch_size,
        }

    def check_resumable(
        self, settings: dict[str, Any], defaults: dict[str, Any] | None = None
    ) -> None:
        """Refuses to resume a run directory that holds a run with other settings.

        A setting the saved run lacks (one added since it began) counts as its value in
        `defaults`, so a new version resumes an old run unless told to run it differently.
        """
        saved = self.read_json("config.json")
        if saved is None:
            return
        saved = _filled(saved, defaults or {})
        differing = [
            difference
            for difference in _differences(saved, settings)
            if difference[0].split(".")[0] not in RESUMABLE_CHANGES
        ]
        if differing:
            # Values too: a default changed since the run began shows as the run's old value.
            raise ValueError(
                f"{self.path} holds a run with other settings ("
                + "; ".join(f"{key}: {was} there, {now} here" for key, was, now in differing)
                + "); resume it with its own settings or choose a new --run-dir"
            )


def _filled(saved: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """`saved` with what it lacks taken from `defaults`, at every depth."""
    filled = dict(saved)
    for key, default in defaults.items():
        if key not in filled:
            filled[key] = default
        elif isinstance(default, dict) and isinstance(filled[key], dict):
            filled[key] = _filled(filled[key], default)
    return filled


def _differences(saved: Any, settings: Any, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted setting, saved value, new value) wherever the two differ, at every depth."""
    if isinstance(saved, dict) and isinstance(settings, dict):
        return [
            difference
            for key in sorted(set(saved) | set(settings))
            for difference in _differences(saved.get(key), settings.get(key), prefix + key + ".")
        ]
    if saved == settings:
        return []
    return [(prefix.rstrip("."), json.dumps(saved), json.dumps(settings))]
