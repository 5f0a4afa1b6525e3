"""The settings of running a model over images (`unet-keras predict`, `evaluate`, volumes),
and the groups of settings export shares with them: the tiles and the threshold. TF-free.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from unet_keras.record import check_threshold
from unet_keras.settings import Settings, at_least, setting


@dataclasses.dataclass(frozen=True)
class Tiling(Settings):
    """How an image is cut into the network's tiles: predict, evaluate, volumes and the
    export graph all tile alike (`unet_keras.geometry`)."""

    tile: int | None = setting(
        None,
        help="input tile side in pixels, the largest run at once (default: 700 for valid "
        "padding at depth 4, 512 for same)",
    )
    overlap: int | None = setting(
        None,
        help="same padding: overlap of neighbouring tiles in pixels (default: a quarter of "
        "the tile)",
    )

    def check(self) -> None:
        at_least(self, 1, "tile")
        at_least(self, 0, "overlap")


def threshold_setting() -> Any:
    """The `threshold` field that predict, evaluate and export share."""
    return setting(
        None,
        help="one-channel models: probability at or above which a pixel is foreground "
        "(default: the one chosen on the validation images after training, else 0.5)",
    )


@dataclasses.dataclass(frozen=True)
class InferenceConfig(Settings):
    """How a model is run over images: tiles, batches, test-time augmentation, threshold."""

    tiling: Tiling = setting(Tiling(), help="the tiles")
    # 1: a model call of N tiles rounds differently for each N, so every call carries
    # exactly `batch_size` tiles (the last filled up with copies); with 1 that costs
    # nothing, and big tiles keep the cores busy on their own.
    batch_size: int = setting(1, help="tiles per model call")
    tta: bool = setting(
        False,
        help="test-time augmentation: average the flips and rotations the model was trained "
        "with (up to 8, as many times slower)",
    )
    threshold: float | None = threshold_setting()

    def check(self) -> None:
        at_least(self, 1, "batch_size")
        check_threshold(self.threshold)

    def segmenter_options(self) -> dict[str, Any]:
        """The keyword arguments of `Segmenter` these settings give."""
        return {
            "tile": self.tiling.tile,
            "overlap": self.tiling.overlap,
            "batch_size": self.batch_size,
            "tta": self.tta,
            "threshold": self.threshold,
        }


@dataclasses.dataclass(frozen=True)
class InstanceConfig(Settings):
    """How predicted classes become labelled objects (see `unet_keras.inference.instances`)."""

    instances: Literal["cc", "watershed"] | None = setting(
        None,
        help="label the predicted objects: cc (connected components) or watershed (split at "
        "narrow necks); predict writes <stem>_labels.tif, evaluate scores them (default: cc)",
    )
    seed_height: float = setting(
        16.0,
        help="watershed: how far, in pixels, a cell's middle must rise above a neck for the "
        "cell to be cut there (16: chosen on ISBI validation sections, 4 nm pixels)",
    )
    min_object_size: int = setting(16, help="watershed: objects of fewer pixels join a neighbour")
    link_sections: bool = setting(
        False, help="stacks: join the objects of consecutive sections into 3D objects"
    )
    min_overlap: float = setting(
        0.5,
        help="with --link-sections: the fraction of the smaller object two objects must share",
    )

    def check(self) -> None:
        at_least(self, 1, "min_object_size")
        if self.seed_height <= 0:
            raise ValueError(f"seed_height must be above 0, got {self.seed_height}")
        if not 0.0 < self.min_overlap <= 1.0:
            raise ValueError(f"min_overlap must be in (0, 1], got {self.min_overlap}")
        if self.link_sections and self.instances is None:
            raise ValueError("link_sections links objects: choose --instances cc or watershed")


MODEL_HELP = (
    "a training run directory, a .keras file, an exported SavedModel version, a shipped "
    "model's name, or an ONNX export (MODEL.onnx, run by ONNX Runtime)"
)


@dataclasses.dataclass(frozen=True)
class PredictConfig(Settings):
    """`unet-keras predict`: segment images of any size into masks in the training
    convention."""

    model: str = setting(help=MODEL_HELP)
    input: str = setting(
        help="image file, multi-page TIFF stack, folder of images, or Zarr / OME-Zarr volume "
        "(VOL.zarr or VOL.zarr/ARRAY)"
    )
    output: str = setting(help="folder for the masks (DIR/<stem>.png); for volumes OUT.zarr")
    probabilities: Literal["png", "tiff", "zarr"] | None = setting(
        None,
        help="also write probability maps: 16-bit PNG or float32 TIFF; for volumes zarr (float32)",
    )
    overlay: bool = setting(False, help="also write the images with predicted outlines")
    inference: InferenceConfig = setting(InferenceConfig(), help="how the model runs")
    objects: InstanceConfig = setting(InstanceConfig(), help="labelled objects")
    block: int | None = setting(
        None,
        help="volumes: rows and columns of a block, rounded up to whole chunks (default: 512)",
    )
    scheduler: str | None = setting(
        None,
        help="volumes: address of a Dask scheduler to send the blocks to, e.g. "
        "tcp://10.0.0.1:8786 (default: this machine)",
    )
    workers: int = setting(
        1, help="volumes without --scheduler: local worker processes (1: this process)"
    )
    retries: int = setting(
        3,
        help="volumes on a cluster: times a task that raised (a block, a labelling step) is "
        "run again; a lost worker's tasks are run again on the others regardless",
    )

    def check(self) -> None:
        at_least(self, 1, "block", "workers")
        at_least(self, 0, "retries")
