"""Training losses: the paper's pixel-weighted cross-entropy, soft Dice, skeleton recall, sums.

Every loss takes `y_true` in the targets layout of the training pipeline: `[B, h, w, 2]`
with the class index in channel 0 and the per-pixel loss weight (the border weight map) in
channel 1; plain labels `[B, h, w]` or `[B, h, w, 1]` mean weight 1 everywhere. The number
of prediction channels decides the task: one sigmoid channel is binary (class 1 is the
foreground), K >= 2 softmax channels are K classes. Each loss returns one value per image,
which Keras averages over the batch. A negative class index marks an unlabelled pixel
(sparse annotations): it weighs 0, so it adds nothing to any loss or metric.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


def split_targets(y_true: Any) -> tuple[Any, Any]:
    """Splits targets into labels (int32 `[B, h, w]`) and loss weights (float32 `[B, h, w]`)."""
    y_true = ops.convert_to_tensor(y_true)
    shape = tuple(y_true.shape)
    if len(shape) == 3:
        labels, weights = y_true, None
    elif len(shape) == 4 and shape[-1] in (1, 2):
        labels = y_true[..., 0]
        weights = y_true[..., 1] if shape[-1] == 2 else None
    else:
        raise ValueError(
            f"targets must be [B, h, w, 2] (class index, loss weight) or labels [B, h, w] or "
            f"[B, h, w, 1], got shape {shape}"
        )
    # Class indices may arrive as floats (they share a tensor with the weights): round, so
    # a value like 0.9999 from a resampling step still means class 1.
    labels = ops.cast(ops.round(ops.cast(labels, "float32")), "int32")
    weights = ops.ones_like(labels, "float32") if weights is None else ops.cast(weights, "float32")
    # Unlabelled pixels (a negative class, IGNORED) weigh 0 wherever augmentation moved
    # them; class 0 stands in for them so that every loss stays finite.
    labelled = labels >= 0
    return ops.where(labelled, labels, 0), ops.where(labelled, weights, 0.0)


def check_predictions(labels: Any, y_pred: Any) -> Any:
    """Returns `y_pred` as float32 after checking it is `[B, h, w, K]` matching `labels`."""
    pred_shape, label_shape = tuple(y_pred.shape), tuple(labels.shape)
    if len(pred_shape) != 4 or pred_shape[-1] is None:
        raise ValueError(
            f"predictions must be [B, h, w, K] with a known channel count K, got {pred_shape}"
        )
    for pred_dim, label_dim in zip(pred_shape[:3], label_shape, strict=True):
        if pred_dim is not None and label_dim is not None and pred_dim != label_dim:
            raise ValueError(
                f"predictions {pred_shape} and labels {label_shape} differ in batch or "
                f"spatial size; with valid padding the targets must be cropped to the output"
            )
    # Mixed-precision models may hand over float16; losses and metrics are computed in float32.
    return ops.cast(y_pred, "float32")


@keras.saving.register_keras_serializable(package="unet_keras")
class WeightedCrossEntropy(keras.losses.Loss):
    """Cross-entropy with each pixel scaled by its weight from `targets[..., 1]`.

    Binary (one sigmoid channel) or categorical (K softmax channels), chosen from the
    prediction's channel count. The per-image value is the mean over pixels of
    `weight * -log(p_true)`; probabilities are clipped to [eps, 1 - eps] before the log.
    """

    def __init__(self, name: str = "weighted_cross_entropy", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """Returns the weighted cross-entropy of each image, shape `[B]`."""
        labels, weights = split_targets(y_true)
        y_pred = check_predictions(labels, y_pred)
        if y_pred.shape[-1] == 1:
            # The channel axis stays so Keras can reach the sigmoid's logits when it sees them.
            target = ops.expand_dims(ops.cast(labels, "float32"), -1)
            pixel_loss = ops.binary_crossentropy(target, y_pred)[..., 0]
        else:
            pixel_loss = ops.sparse_categorical_crossentropy(labels, y_pred)
        return ops.mean(weights * pixel_loss, axis=(1, 2))


@keras.saving.register_keras_serializable(package="unet_keras")
class DiceLoss(keras.losses.Loss):
    """Soft Dice loss, `1 - (2 |P*Y| + smooth) / (|P| + |Y| + smooth)`, per image.

    Binary: on the foreground probability. Multi-class: the mean Dice over classes, leaving
    class 0 out when `exclude_background`. The loss weights in the targets only matter where
    they are 0: those pixels (outside the image) are left out.
    """

    def __init__(
        self,
        smooth: float = 1.0,
        exclude_background: bool = False,
        name: str = "dice_loss",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        if smooth < 0:
            raise ValueError(f"DiceLoss smooth must be >= 0, got {smooth}")
        self.smooth = float(smooth)
        self.exclude_background = bool(exclude_background)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """Returns one minus the soft Dice coefficient of each image, shape `[B]`."""
        labels, weights = split_targets(y_true)
        y_pred = check_predictions(labels, y_pred)
        counted = ops.expand_dims(ops.cast(weights > 0, "float32"), -1)
        y_pred = y_pred * counted
        channels = y_pred.shape[-1]
        if channels == 1:
            truth = ops.expand_dims(ops.cast(ops.equal(labels, 1), "float32"), -1)
        else:
            truth = ops.one_hot(labels, channels, dtype="float32")
        truth = truth * counted
        if channels > 1 and self.exclude_background:
            truth, y_pred = truth[..., 1:], y_pred[..., 1:]
        intersection = ops.sum(y_pred * truth, axis=(1, 2))
        total = ops.sum(y_pred, axis=(1, 2)) + ops.sum(truth, axis=(1, 2))
        dice = (2.0 * intersection + self.smooth) / (total + self.smooth)
        return 1.0 - ops.mean(dice, axis=-1)

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments."""
        return {
            **super().get_config(),
            "smooth": self.smooth,
            "exclude_background": self.exclude_background,
        }


@keras.saving.register_keras_serializable(package="unet_keras")
class CombinedLoss(keras.losses.Loss):
    """Weighted cross-entropy plus soft Dice loss, per image."""

    def __init__(
        self,
        smooth: float = 1.0,
        exclude_background: bool = False,
        name: str = "ce_dice",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.cross_entropy = WeightedCrossEntropy()
        self.dice = DiceLoss(smooth=smooth, exclude_background=exclude_background)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """Returns cross-entropy plus Dice loss of each image, shape `[B]`."""
        return self.cross_entropy.call(y_true, y_pred) + self.dice.call(y_true, y_pred)

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments."""
        return {
            **super().get_config(),
            "smooth": self.dice.smooth,
            "exclude_background": self.dice.exclude_background,
        }


def soft_skeleton(masks: Any, iterations: int) -> Any:
    """A soft skeleton of masks `[B, h, w, 1]` (Shit et al. 2021, clDice); binary stays binary.

    Each round erodes by a 3x3 cross (min-pooling) and keeps what an opening removes;
    `iterations` rounds reach the centre line of structures up to about twice as wide.
    """

    def erode(x: Any) -> Any:
        rows = -ops.max_pool(-x, (3, 1), strides=1, padding="same")
        columns = -ops.max_pool(-x, (1, 3), strides=1, padding="same")
        return ops.minimum(rows, columns)

    def opened(x: Any) -> Any:
        return ops.max_pool(erode(x), 3, strides=1, padding="same")

    skeleton = ops.relu(masks - opened(masks))
    for _ in range(iterations):
        masks = erode(masks)
        delta = ops.relu(masks - opened(masks))
        skeleton = skeleton + ops.relu(delta - skeleton * delta)
    return skeleton


@keras.saving.register_keras_serializable(package="unet_keras")
class SkeletonRecallLoss(keras.losses.Loss):
    """One minus the fraction of the true boundary's skeleton that the predicted boundary
    covers, per image (Kirchhoff et al., ECCV 2024). The boundary is `boundary_class`:
    class 0 by default, ISBI's membranes.

    A gap in a predicted membrane costs in proportion to its length along the membrane, not
    to its few pixels, which is how one gap merges two cells. Only the truth is
    skeletonised, without a gradient: clDice's skeleton of the prediction cost 10x more
    time a step here for the same aim. Pixels of loss weight 0 are left out.
    """

    def __init__(
        self,
        iterations: int = 10,
        smooth: float = 1.0,
        boundary_class: int = 0,
        name: str = "skeleton_recall",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        if boundary_class < 0:
            raise ValueError(
                f"SkeletonRecallLoss boundary_class must be >= 0, got {boundary_class}"
            )
        if iterations < 1:
            raise ValueError(f"SkeletonRecallLoss iterations must be >= 1, got {iterations}")
        if smooth < 0:
            raise ValueError(f"SkeletonRecallLoss smooth must be >= 0, got {smooth}")
        self.iterations = int(iterations)
        self.smooth = float(smooth)
        self.boundary_class = int(boundary_class)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """Returns one minus the soft recall of the true boundary's skeleton, shape `[B]`."""
        labels, weights = split_targets(y_true)
        y_pred = check_predictions(labels, y_pred)
        counted = ops.expand_dims(ops.cast(weights > 0, "float32"), -1)
        channels, index = y_pred.shape[-1], self.boundary_class
        if index >= max(channels, 2):
            raise ValueError(
                f"SkeletonRecallLoss boundary_class {index} is not one of the {max(channels, 2)} "
                f"classes of predictions {tuple(y_pred.shape)}"
            )
        if channels == 1:
            # One sigmoid channel is class 1's probability; class 0's is its complement.
            boundary = y_pred if index == 1 else 1.0 - y_pred
        else:
            boundary = y_pred[..., index : index + 1]
        truth = ops.expand_dims(ops.cast(ops.equal(labels, index), "float32"), -1) * counted
        skeleton = ops.stop_gradient(soft_skeleton(truth, self.iterations))
        covered = ops.sum(skeleton * boundary, axis=(1, 2, 3)) + self.smooth
        return 1.0 - covered / (ops.sum(skeleton, axis=(1, 2, 3)) + self.smooth)

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments."""
        return {
            **super().get_config(),
            "iterations": self.iterations,
            "smooth": self.smooth,
            "boundary_class": self.boundary_class,
        }


@keras.saving.register_keras_serializable(package="unet_keras")
class CrossEntropySkeletonRecall(keras.losses.Loss):
    """Weighted cross-entropy plus `weight` times the skeleton recall loss, per image."""

    def __init__(
        self,
        weight: float = 1.0,
        iterations: int = 10,
        smooth: float = 1.0,
        boundary_class: int = 0,
        name: str = "ce_skeleton_recall",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        if weight < 0:
            raise ValueError(f"CrossEntropySkeletonRecall weight must be >= 0, got {weight}")
        self.weight = float(weight)
        self.cross_entropy = WeightedCrossEntropy()
        self.skeleton_recall = SkeletonRecallLoss(iterations, smooth, boundary_class)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """Returns cross-entropy plus the weighted skeleton recall loss of each image, `[B]`."""
        recall = self.skeleton_recall.call(y_true, y_pred)
        return self.cross_entropy.call(y_true, y_pred) + self.weight * recall

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments."""
        return {
            **super().get_config(),
            "weight": self.weight,
            "iterations": self.skeleton_recall.iterations,
            "smooth": self.skeleton_recall.smooth,
            "boundary_class": self.skeleton_recall.boundary_class,
        }
