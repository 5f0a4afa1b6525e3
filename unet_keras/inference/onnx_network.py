"""An ONNX export (`unet-keras export --format onnx`) run by ONNX Runtime: prediction
without TensorFlow, on the CPU, or on a GPU when ONNX Runtime's CUDA provider is there."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from unet_keras import contract
from unet_keras.record import ModelRecord, parse_record


def load_onnx(
    path: str | os.PathLike, providers: list[str] | None = None
) -> tuple[Callable[[np.ndarray], np.ndarray], ModelRecord]:
    """The network of an ONNX export, from raw tiles [N, h, w, C] to probabilities, and the
    model's record; `providers` default to CUDA when available, then the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX model file")
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(
            f"{path}: ONNX models run on ONNX Runtime; pip install 'unet-keras[onnx]'"
        ) from None
    if providers is None:
        available = onnxruntime.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider",) if p in available]
        providers.append("CPUExecutionProvider")
    try:
        session = onnxruntime.InferenceSession(str(path), providers=providers)
    except Exception as error:  # ONNX Runtime raises its own classes for a bad file
        raise ValueError(f"{path}: not a model ONNX Runtime can run ({error})") from None
    properties = session.get_modelmeta().custom_metadata_map
    if contract.ONNX_RECORD not in properties:
        raise ValueError(
            f"{path}: an ONNX model without a unet-keras record ({contract.ONNX_RECORD} in "
            "its metadata_props); export models with `unet-keras export --format onnx`"
        )
    record = parse_record(properties[contract.ONNX_RECORD], path)
    outputs = [contract.PROBABILITIES]

    def network(tiles: np.ndarray) -> np.ndarray:
        return session.run(outputs, {contract.IMAGE: tiles})[0]

    return network, record
