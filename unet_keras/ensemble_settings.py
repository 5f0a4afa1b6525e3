"""The settings of `unet-keras ensemble`. TF-free."""

from __future__ import annotations

import dataclasses

from unet_keras.record import check_threshold
from unet_keras.settings import Settings, setting


@dataclasses.dataclass(frozen=True)
class EnsembleConfig(Settings):
    """`unet-keras ensemble`: trained models as one model file that averages their
    probability maps (runs of one recipe with different seeds, as nnU-Net's folds)."""

    models: tuple[str, ...] = setting(
        help="two or more training run directories, .keras files or shipped models' names, "
        "of one network shape and mask convention",
        metavar="MODEL",
    )
    output: str = setting(help="the model file to write, NAME.keras")
    threshold: float | None = setting(
        None,
        help="one-channel models: probability at or above which a pixel is foreground "
        "(default: the mean of the members' chosen thresholds)",
    )

    def check(self) -> None:
        if len(self.models) < 2:
            raise ValueError(f"--models: an ensemble needs at least two models, got {self.models}")
        check_threshold(self.threshold)
