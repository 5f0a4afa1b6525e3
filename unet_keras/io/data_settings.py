"""The settings of `unet-keras synthetic`, which writes the embedded synthetic EM data set.
TF-free."""

from __future__ import annotations

import dataclasses

from unet_keras.settings import Settings, setting


@dataclasses.dataclass(frozen=True)
class SyntheticConfig(Settings):
    """`unet-keras synthetic`: write the embedded synthetic EM data set as image/mask
    folders."""

    output: str = setting(help="folder to create images/ and masks/ in", positional=True)
    count: int = setting(24, help="number of image/mask pairs")
    size: int = setting(512, help="side length in pixels")
    seed: int = setting(0, help="random seed")
