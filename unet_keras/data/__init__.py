"""Reading training and prediction data: files and stacks, mask classes, normalisation.

No TensorFlow here: NumPy, Pillow and tifffile only.
"""

from unet_keras.data.masks import infer_mask_config, labels_to_mask, mask_to_labels
from unet_keras.data.normalization import fit_normalization, normalize
from unet_keras.data.readers import (
    IMAGE_SUFFIXES,
    list_images,
    load_dataset,
    read_image,
    read_mask,
    read_pages,
)
from unet_keras.data.sample import DataError, Sample

__all__ = [
    "IMAGE_SUFFIXES",
    "DataError",
    "Sample",
    "fit_normalization",
    "infer_mask_config",
    "labels_to_mask",
    "list_images",
    "load_dataset",
    "mask_to_labels",
    "normalize",
    "read_image",
    "read_mask",
    "read_pages",
]
