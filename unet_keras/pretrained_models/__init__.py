"""Models that ship with the package, by name: `unet_keras.pretrained(NAME)`, `--model NAME`,
`--init-from NAME`.

Each is a `.keras` file saved with its record (as `save_model` writes it, without optimizer
state) beside a JSON file that says how it was trained and scored and on whose data, and
the command that makes it again (`training.remake`, a script in `bench/`). Naming a shipped model
works wherever a model path does; a file or folder of that name in the working directory
wins, so a name never hides the user's own files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# name -> what it is; the files are HERE/<name>.keras and HERE/<name>.json.
SHIPPED = {
    "isbi2012-membranes": (
        "EM membranes (ISBI 2012, Drosophila ventral nerve cord, serial-section TEM, 4x4x50 nm): "
        "one sigmoid channel, membrane 0 and cells 255 in its masks"
    ),
}


def shipped_file(name: str) -> Path | None:
    """The `.keras` file of the shipped model `name`, or None when none is called so."""
    return HERE / f"{name}.keras" if name in SHIPPED else None


def resolve(path: str | os.PathLike) -> Path:
    """`path` itself, or the shipped model it names when no such file or folder exists."""
    given = Path(path)
    shipped = shipped_file(str(path))
    if given.exists() or shipped is None:
        return given
    if not shipped.is_file():
        raise FileNotFoundError(
            f"{shipped}: the shipped model {str(path)!r} is missing from this installation; "
            f"reinstall unet-keras, or make it again with the command its record gives "
            f"({HERE / (str(path) + '.json')}: training.remake)"
        )
    return shipped


def training_record(name: str) -> dict[str, Any]:
    """How the shipped model `name` was trained and scored, and the terms of its data."""
    if name not in SHIPPED:
        raise ValueError(f"no shipped model {name!r}; shipped: {', '.join(sorted(SHIPPED))}")
    return json.loads((HERE / f"{name}.json").read_text())
