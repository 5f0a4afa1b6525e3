"""Segmentation metrics that accumulate pixel counts over batches: IoU, Dice, pixel error.

Predictions become classes by thresholding the one sigmoid channel at 0.5 (binary; class 1
is the foreground) or by argmax over K softmax channels. Targets follow the layout in
`unet_keras.training.losses`; their loss weights only matter where they are 0: such pixels (outside
the image, in the pipeline's validation tiles) are not counted. IoU and Dice are computed
from counts summed over every pixel seen since the last reset, not averaged per batch.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from unet_keras.training.losses import check_predictions, split_targets


def _predicted_classes(y_pred: Any) -> Any:
    """Class index per pixel, int32 `[B, h, w]`, from sigmoid or softmax outputs."""
    if y_pred.shape[-1] == 1:
        return ops.cast(y_pred[..., 0] >= 0.5, "int32")
    return ops.cast(ops.argmax(y_pred, axis=-1), "int32")


def _checked_classes(y_true: Any, y_pred: Any, sample_weight: Any) -> tuple[Any, Any, Any]:
    """Returns (labels, predicted classes, counted-pixel mask) for a batch."""
    if sample_weight is not None:
        raise ValueError(
            "unet_keras metrics count every pixel equally and take no sample_weight; "
            "per-pixel loss weights belong in targets[..., 1], where only the losses read them"
        )
    labels, weights = split_targets(y_true)
    counted = ops.cast(weights > 0, "float32")
    return labels, _predicted_classes(check_predictions(labels, y_pred)), counted


def _iou(overlap: Any, pixels: Any) -> Any:
    """Intersection over union; `pixels` counts predicted plus labelled pixels."""
    return overlap / (pixels - overlap)


def _dice(overlap: Any, pixels: Any) -> Any:
    """Dice coefficient; `pixels` counts predicted plus labelled pixels."""
    return 2.0 * overlap / pixels


class _ClassOverlap(keras.metrics.Metric):
    """Accumulates, per class, the pixels predicted, the pixels labelled and their overlap.

    Subclasses set `_score(overlap, pixels)`: a class's score from its overlap and its
    predicted plus labelled pixel count (positive).

    `classes` is the model's output channel count (1 = one sigmoid channel, two classes).
    The result is the score of `class_id`, by default the foreground for binary tasks and the
    mean over classes otherwise. A class found in neither labels nor predictions scores 1
    alone and is left out of the mean.
    """

    def __init__(
        self,
        classes: int = 1,
        class_id: int | None = None,
        name: str | None = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(name=name, dtype=dtype)
        if int(classes) != classes or classes < 1:
            raise ValueError(f"{type(self).__name__} classes must be >= 1, got {classes!r}")
        counted = max(int(classes), 2)
        if class_id is not None and not 0 <= class_id < counted:
            raise ValueError(
                f"{type(self).__name__} class_id must be in [0, {counted}), got {class_id!r}"
            )
        self.classes = int(classes)
        self.class_id = class_id
        self._counted = counted
        self.overlap = self.add_variable((counted,), "zeros", name="overlap")
        self.predicted = self.add_variable((counted,), "zeros", name="predicted")
        self.labelled = self.add_variable((counted,), "zeros", name="labelled")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        """Adds one batch's per-class pixel counts."""
        if y_pred.shape[-1] != self.classes:
            raise ValueError(
                f"{self.name} was built for {self.classes} output channel(s), "
                f"got predictions of shape {tuple(y_pred.shape)}"
            )
        labels, predicted, counted = _checked_classes(y_true, y_pred, sample_weight)
        counted = ops.expand_dims(ops.cast(counted, self.dtype), -1)
        truth = ops.one_hot(labels, self._counted, dtype=self.dtype) * counted
        guess = ops.one_hot(predicted, self._counted, dtype=self.dtype) * counted
        self.overlap.assign_add(ops.sum(truth * guess, axis=(0, 1, 2)))
        self.predicted.assign_add(ops.sum(guess, axis=(0, 1, 2)))
        self.labelled.assign_add(ops.sum(truth, axis=(0, 1, 2)))

    def result(self) -> Any:
        """Returns the score of `class_id` (foreground for binary) or the mean over classes."""
        pixels = self.predicted + self.labelled
        seen = pixels > 0
        scores = ops.where(seen, self._score(self.overlap, ops.where(seen, pixels, 1.0)), 0.0)
        class_id = 1 if self.class_id is None and self.classes == 1 else self.class_id
        if class_id is not None:
            return ops.where(seen[class_id], scores[class_id], 1.0)
        return ops.sum(scores) / ops.maximum(ops.sum(ops.cast(seen, self.dtype)), 1.0)

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments."""
        return {**super().get_config(), "classes": self.classes, "class_id": self.class_id}


@keras.saving.register_keras_serializable(package="unet_keras")
class IoU(_ClassOverlap):
    """Intersection over union (Jaccard index) of predicted and labelled classes."""

    def __init__(
        self, classes: int = 1, class_id: int | None = None, name: str = "iou", **kwargs: Any
    ) -> None:
        super().__init__(classes=classes, class_id=class_id, name=name, **kwargs)

    _score = staticmethod(_iou)


@keras.saving.register_keras_serializable(package="unet_keras")
class Dice(_ClassOverlap):
    """Dice coefficient (F1) of predicted and labelled classes."""

    def __init__(
        self, classes: int = 1, class_id: int | None = None, name: str = "dice", **kwargs: Any
    ) -> None:
        super().__init__(classes=classes, class_id=class_id, name=name, **kwargs)

    _score = staticmethod(_dice)


@keras.saving.register_keras_serializable(package="unet_keras")
class PixelError(keras.metrics.Metric):
    """Fraction of pixels whose predicted class differs from the label."""

    def __init__(self, name: str = "pixel_error", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.wrong = self.add_variable((), "zeros", name="wrong")
        self.total = self.add_variable((), "zeros", name="total")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        """Adds one batch's misclassified and total pixel counts."""
        labels, predicted, counted = _checked_classes(y_true, y_pred, sample_weight)
        counted = ops.cast(counted, self.dtype)
        wrong = ops.cast(ops.not_equal(labels, predicted), self.dtype) * counted
        self.wrong.assign_add(ops.sum(wrong))
        self.total.assign_add(ops.sum(counted))

    def result(self) -> Any:
        """Returns misclassified pixels over all pixels seen (0 before any update)."""
        return self.wrong / ops.maximum(self.total, 1.0)
