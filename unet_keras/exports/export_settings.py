"""The settings of `unet-keras export`. TF-free."""

from __future__ import annotations

import dataclasses
from typing import Literal

from unet_keras.inference.inference_settings import Tiling, threshold_setting
from unet_keras.record import check_threshold
from unet_keras.settings import Settings, at_least, setting

# A 16384 x 16384 image: larger requests are refused (INVALID_ARGUMENT) before any work,
# which also guards PNG input against decompression bombs.
DEFAULT_MAX_PIXELS = 16384 * 16384


@dataclasses.dataclass(frozen=True)
class ExportConfig(Settings):
    """`unet-keras export`: the next SavedModel version that TensorFlow Serving serves."""

    model: str = setting(help="a training run directory or a .keras file")
    base_path: str | None = setting(
        None, help="savedmodel: model base path; versions go to BASE/<n>/"
    )
    format: Literal["savedmodel", "bioimageio", "onnx"] = setting(
        "savedmodel",
        help="savedmodel (TensorFlow Serving), bioimageio (a BioImage.IO model package) or "
        "onnx (the network on tiles, for ONNX Runtime; needs no TensorFlow)",
    )
    output: str | None = setting(
        None, help="bioimageio: the package to write, PKG.zip; onnx: the file, MODEL.onnx"
    )
    version: int | None = setting(
        None,
        help="version number (savedmodel default: one more than the latest; bioimageio: the "
        "package's version, default 1)",
    )
    tiling: Tiling = setting(Tiling(), help="the graph's tiles, as predict's")
    threshold: float | None = threshold_setting()
    max_pixels: int = setting(
        DEFAULT_MAX_PIXELS,
        help="largest image (H x W) a request may carry; larger ones get INVALID_ARGUMENT",
    )
    warmup: bool = setting(
        True,
        help="write warmup requests (assets.extra/tf_serving_warmup_requests), which the "
        "server replays before a version is AVAILABLE so that its first request is not slow",
    )

    authors: tuple[str, ...] = setting(
        ("unet-keras developers",), help="bioimageio: the package's authors, by name"
    )
    maintainers: tuple[str, ...] = setting(
        (), help="bioimageio: the package's maintainers, by GitHub user name (the zoo wants one)"
    )
    git_repo: str | None = setting(
        None, help="bioimageio: the https:// URL of the model's git repository"
    )
    test_image: str | None = setting(
        None,
        help="bioimageio: an image (e.g. a real section) for the package's test and cover "
        "(default: a synthetic EM section)",
    )

    def check(self) -> None:
        at_least(self, 1, "version", "max_pixels")
        needed = {
            "savedmodel": ("base_path", "--base-path"),
            "bioimageio": ("output", "--output"),
            "onnx": ("output", "--output"),
        }
        name, flag = needed[self.format]
        if getattr(self, name) is None:
            raise ValueError(f"export --format {self.format} needs {flag}")
        check_threshold(self.threshold)
