"""The settings of `unet-keras train` (and `train_keras.py`), its augmentation, and of
`unet-keras inspect`, which loads a data set as training would. TF-free."""

from __future__ import annotations

import dataclasses
from typing import Literal

from unet_keras.record import SYMMETRIES, ModelConfig
from unet_keras.settings import Settings, at_least, setting


@dataclasses.dataclass(frozen=True)
class AugmentConfig(Settings):
    """Training augmentation: the paper's elastic deformation plus optional extras."""

    elastic: bool = setting(
        True, help="elastic deformation (random displacements on a coarse grid, as in the paper)"
    )
    elastic_grid: tuple[int, int] = setting(
        (3, 3), help="control points of the displacement grid (rows columns)"
    )
    elastic_sigma: float = setting(
        10.0, help="standard deviation of the grid displacements in pixels"
    )
    elastic_backend: Literal["tensorflow", "elasticdeform"] = setting(
        "tensorflow", help="tensorflow (in-graph, parallel) or elasticdeform (reference)"
    )
    interpolation: Literal["linear", "cubic"] = setting(
        "linear", help="image interpolation under deformation"
    )
    flips: bool = setting(True, help="random left-right flips")
    # Off by default: a quarter turn also turns the annotation's own sub-pixel offset from
    # the image (ISBI 2012's masks sit 0.6 px above the membranes), which the model then
    # cannot learn; on ISBI, training without them cut held-out pixel error from 0.0858 to
    # 0.0834 (4 and 3 runs of 900 s, docs/benchmarks.md). Left-right flips keep the
    # vertical offset.
    rotations: bool = setting(False, help="random 90-degree rotations")
    gamma: float = setting(0.0, help="random gamma: exp(uniform(-g, g)); 0 disables it")
    contrast: float = setting(0.0, help="random contrast factor in [1 - c, 1 + c]; 0 disables it")

    def check(self) -> None:
        if min(self.elastic_grid) < 2:
            raise ValueError(
                f"elastic_grid must be two sizes of at least 2, got {self.elastic_grid!r}"
            )
        at_least(self, 0, "elastic_sigma", "gamma", "contrast")

    @property
    def symmetries(self) -> str:
        """The flips and quarter turns training draws from, as `ModelRecord.symmetries`."""
        return next(k for k, v in SYMMETRIES.items() if v == (self.flips, self.rotations))


@dataclasses.dataclass(frozen=True)
class TrainConfig(Settings):
    """Everything a training run needs; `train_keras.py` flags and config files set it."""

    data: str | None = setting(
        None,
        help="data folder (images/ + masks/), ISBI TIFF stack, or images folder with --masks; "
        "none: the embedded synthetic EM data set",
    )
    masks: str | None = setting(
        None, help="masks folder or label stack when not beside the images"
    )
    class_values: tuple[int, ...] | None = setting(
        None,
        help="mask pixel value of each class, e.g. 0 255 (ISBI: membrane 0, cells 255) or "
        "255 0 (membrane drawn white); none: inferred from the masks",
    )
    mask_threshold: float | None = setting(
        None,
        help="binary masks only: values at or above it are the larger class value (for lossy "
        "masks)",
    )
    ignore_value: int | None = setting(
        None,
        help="mask pixel value of unlabelled pixels (sparse annotations): no loss, metric or "
        "calibration counts them",
    )
    foreground: Literal["auto", "bright", "dark"] = setting(
        "auto",
        help="with inferred binary masks: which value marks the cells (auto: the majority "
        "value, right for EM membrane masks)",
    )
    normalization: Literal["standardize", "unit_range"] = setting(
        "standardize",
        help="intensity normalisation learnt from the training images: standardize "
        "(mean/std) or unit_range (divide by the dtype maximum)",
    )
    validation: int = setting(4, help="whole images held out for validation")
    context_sections: int = setting(
        0,
        help="sections above and below each section that the network sees beside it, as "
        "extra input channels (ordered -K..K, mirrored past the stack's ends); --data must "
        "be a stack: a multi-page TIFF or a folder of sections in name order; 0: none",
    )
    calibrate_by: Literal["auto", "adapted_rand_error", "pixel_error", "iou_0", "v_rand"] = (
        setting(
            "auto",
            help="what the threshold chosen on the validation images after training "
            "optimises: auto (pixel error; membrane IoU iou_0 with sparse masks), "
            "adapted_rand_error (objects; noisy on a few validation images) or v_rand (the "
            "ISBI challenge's V^Rand after border thinning); rerun a finished run to choose "
            "again",
        )
    )
    # 16 filters, same padding, 256 px tiles: what a 2-core CPU learns most from in a budget
    # (docs/benchmarks.md, the recipe study); batch normalisation, with --keep last: the
    # best V^Rand at 900 s; no dropout (in front of batch-normalised convolutions it shifts
    # their statistics between training and inference): with gamma and contrast below, a
    # higher V^Rand, V^Info and 1 - F on both seeds measured (docs/benchmarks.md, 2026-12-07).
    # --padding valid --no-batch-norm --dropout 0.5 is the paper's network.
    model: ModelConfig = setting(
        ModelConfig(filters=16, padding="same", batch_norm=True, dropout=0.0),
        help="the network's shape",
    )
    tile: int = setting(
        256,
        help="input tile side in pixels (valid padding: the output is 184 px smaller at depth 4)",
    )
    # Random gamma and contrast: faint, low-contrast membranes (ISBI section 20) are where
    # cells merge; AugmentConfig's own defaults leave them off for library use.
    augment: AugmentConfig = setting(
        AugmentConfig(gamma=0.3, contrast=0.25), help="the augmentations"
    )
    w0: float = setting(
        3.0, help="border weight map: weight of the gaps between cells (paper: 10)"
    )
    sigma: float = setting(5.0, help="border weight map: width of the gaps in pixels")
    # The Dice term is 1 - F of the foreground made differentiable (the challenge's pixel
    # error). Over 4 seeds on ISBI it was level on the challenge's scores and raised V^Rand
    # at the run's own threshold, which predict uses, from 0.811 to 0.878 at no cost in
    # pixel error; choosing the threshold by V^Rand instead cost 0.03 of 1 - F.
    loss: Literal[
        "cross_entropy", "dice", "cross_entropy+dice", "cross_entropy+skeleton_recall"
    ] = setting(
        "cross_entropy+dice",
        help="cross_entropy is weighted by the border map; dice is soft Dice of the "
        "foreground (with several classes, their mean); skeleton_recall adds the fraction "
        "of the membranes' centre lines left uncovered",
    )
    optimizer: Literal["adam", "sgd"] = setting(
        "adam", help="adam, or sgd (the paper's, with --momentum)"
    )
    init_from: str | None = setting(
        None,
        help="start from trained weights: a .keras file, run directory, exported SavedModel "
        "version or shipped model (isbi2012-membranes); its network (--depth, --filters, "
        "--padding, --batch-norm, --dropout) is this run's unless given",
    )
    freeze_encoder: int = setting(
        0,
        help="with --init-from: epochs at the start during which the contracting path stays fixed",
    )
    learning_rate: float = setting(1e-3, help="peak learning rate")
    momentum: float = setting(0.99, help="SGD momentum (paper: 0.99)")
    schedule: Literal["constant", "cosine"] = setting(
        "cosine",
        help="learning rate schedule over the run (the time budget or the epochs, whichever "
        "ends first): cosine (warm-up, then decay to 0 at the end) or constant",
    )
    warmup: float = setting(
        0.03, help="cosine schedule: fraction of the run over which the rate rises from 0"
    )
    weight_average: float = setting(
        0.999,
        help="momentum of a moving average of the weights, which validation and best.keras "
        "use (warmed up: at most (1 + t) / (10 + t) after t steps, so a short run averages "
        "its later tenth); 0: off",
    )
    batch_size: int = setting(2, help="tiles per step (global, over all replicas)")
    epochs: int | None = setting(
        None, help="epochs to train (default: as many as --max-time allows, else 40)"
    )
    steps_per_epoch: int = setting(50, help="training steps per epoch")
    patience: int = setting(
        0,
        help="stop once the validation pixel error has not improved for this many epochs "
        "(counted over all sessions of a resumed run); 0: never",
    )
    keep: Literal["last", "best"] = setting(
        "last",
        help="the model the run keeps as best.keras (what predict, evaluate, export and the "
        "threshold use): last, the final weights (their average with --weight-average), or "
        "best, the epoch of lowest validation pixel error (fewer membrane pixels wrong, more "
        "merged cells: docs/training.md); without validation images, last",
    )
    seed: int = setting(0, help="random seed: data split, weights, tiles")
    max_time: float | None = setting(
        None,
        help="training time budget in seconds, over all sessions of a resumed run: the "
        "schedule spans it and the run stops at its end",
    )
    run_dir: str = setting(
        "runs/unet", help="directory for the model, logs and summary; rerun to resume"
    )
    strategy: Literal["default", "mirrored", "multiworker"] = setting(
        "default", help="default, mirrored (GPUs of one machine) or multiworker (TF_CONFIG)"
    )
    precision: Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"] = setting(
        "auto",
        help="auto: mixed_bfloat16 on CPUs with native bf16 (AVX512_BF16 or AMX) where "
        "TensorFlow runs oneDNN, else float32; mixed_float16 suits GPUs",
    )
    gradient_exchange: Literal["auto", "float32", "bfloat16"] = setting(
        "auto",
        help="dtype the replicas sum their gradients in (mirrored, multiworker); auto: "
        "bfloat16 under mixed_bfloat16, whose gradients carry bf16 precision already (half "
        "the bytes on the network), else float32",
    )
    onednn: Literal["auto", "on", "off"] = setting(
        "auto",
        help="oneDNN CPU kernels (TF_ENABLE_ONEDNN_OPTS, read as TensorFlow loads); auto: "
        "on for models of at most 32 filters on x86 (1.5x faster at 16 filters on AVX2, "
        "where TensorFlow leaves them off), else TensorFlow's choice (on with AVX-512 bf16)",
    )
    jit_compile: bool = setting(False, help="compile the training step with XLA")

    def check(self) -> None:
        at_least(self, 1, "batch_size", "epochs", "steps_per_epoch", "tile")
        at_least(self, 0, "validation", "freeze_encoder", "context_sections", "patience")
        if self.patience and not self.validation:
            raise ValueError("patience waits for the validation score: give --validation N > 0")
        if self.freeze_encoder and not self.init_from:
            raise ValueError("freeze_encoder keeps trained weights fixed: give --init-from too")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup must be a fraction in [0, 1), got {self.warmup}")
        if not 0.0 <= self.weight_average < 1.0:
            raise ValueError(f"--weight-average must be in [0, 1), got {self.weight_average}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.max_time is not None and self.max_time <= 0:
            raise ValueError(f"max_time must be positive seconds, got {self.max_time}")


@dataclasses.dataclass(frozen=True)
class InspectConfig(Settings):
    """`unet-keras inspect`: load a data set as training would and report what it holds."""

    data: str = setting(
        help="data folder (images/ + masks/), image folder or TIFF stack", positional=True
    )
    masks: str | None = setting(None, help="mask folder or label stack, if not beside data")
    foreground: Literal["auto", "bright", "dark"] = setting(
        "auto", help="which mask value marks the objects (auto: the majority value, as in EM)"
    )
    ignore_value: int | None = setting(
        None, help="mask pixel value of unlabelled pixels (sparse annotations)"
    )
