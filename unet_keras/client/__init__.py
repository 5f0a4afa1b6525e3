"""A gRPC client for the U-Net served by TensorFlow Serving, without TensorFlow.

`pip install 'unet-keras[client]'` installs what it needs and no more: grpcio, protobuf,
numpy, and Pillow and tqdm for `unet-client`. Importing it takes about 0.3 s and never loads
TensorFlow: it carries its own copies of TF Serving's message definitions, kept apart from
any `tensorflow` or `tensorflow_serving` imported in the same process.

```python
import numpy as np
from PIL import Image

from unet_keras.client import SegmentationClient

with SegmentationClient("localhost:8500", "unet", timeout=30) as client:
    client.wait_until_available(timeout=120)   # the newest AVAILABLE version
    image = np.asarray(Image.open("slice.png"))   # [H, W] or [H, W, C], the model's dtype
    result = client.segment(image)   # any size: large images are tiled
    Image.fromarray(result.mask).save("slice_mask.png")   # 255 = cell, 0 = membrane

    result = client.segment(image, probabilities=True, version=3)
    result.probabilities   # float32 [H, W, classes]
    results = client.segment_many([image, image], concurrency=8)   # in order
    client.model_status()   # [{"version": 3, "state": "AVAILABLE", ...}]
    client.metadata()   # signatures: input/output names, dtypes, shapes
    client.model_record()   # ModelRecord: normalisation, mask values, shape, tile, threshold
```

`version` is a number, a label (str, from the server's `version_labels`) or None for the
latest. TLS, message limits, keepalive, compression and load balancing are set with
`ChannelConfig`, retries with `RetryPolicy`:

```python
from unet_keras.client import ChannelConfig, RetryPolicy, SegmentationClient

client = SegmentationClient(
    "unet.example.org:443",
    channel=ChannelConfig(
        tls=True,
        root_certificates=open("ca.pem", "rb").read(),   # default: the system's roots
        max_send_bytes=64 << 20,   # default 256 MiB each way
        compression="gzip",
    ),
    retry=RetryPolicy(attempts=5, initial_backoff=0.1, retry_resource_exhausted=True),
)
```

Every call has a deadline (`timeout`, retries included). Only UNAVAILABLE is retried
(and RESOURCE_EXHAUSTED on request), with exponential backoff and full jitter. Failures
raise a `ServingError` subclass per gRPC status, named as in `tf.errors`
(`InvalidArgumentError`, `NotFoundError`, `FailedPreconditionError`, `UnavailableError`,
`DeadlineExceededError`, which is also a `TimeoutError`, `ResourceExhaustedError`, ...),
with `.code` and the server's message, verbatim, in `.message`.

An image whose request or response would pass a message limit is cut into tiles on the
model's pooling grid, each with enough context around the part kept (107 pixels for a
depth-4 U-Net, from the model's record) that the stitched result of a valid-padding
model equals the whole-image one, up to float rounding; see `unet_keras.geometry`.

`AsyncSegmentationClient` has the same methods as coroutines, on `grpc.aio`:

```python
async with AsyncSegmentationClient("localhost:8500") as client:
    results = await client.segment_many(images, concurrency=8)
```

From the shell: `unet-client segment INPUT -o OUTPUT --server HOST:PORT` writes
`OUTPUT/<stem>.png` for an image or a folder of PNG/TIFF images, and `unet-client status
--server HOST:PORT` prints the model's version states as JSON; `unet-client --help`.
"""

from __future__ import annotations

from unet_keras.lazy import lazy_names

# Public name -> module that defines it; resolved on first use (PEP 562), so that the
# client's own modules, which import each other through this package, import no cycle.
_MODULES = {
    "unet_keras.client.sync": ("SegmentationClient",),
    "unet_keras.client.aio": ("AsyncSegmentationClient",),
    "unet_keras.client.config": ("ChannelConfig", "RetryPolicy"),
    "unet_keras.client.protocol": ("Segmentation",),
    "unet_keras.client.tensors": ("make_ndarray", "make_tensor_proto"),
    "unet_keras.client.errors": (
        "ServingError", "CancelledError", "DeadlineExceededError", "FailedPreconditionError",
        "InternalError", "InvalidArgumentError", "NotFoundError", "PermissionDeniedError",
        "ResourceExhaustedError", "UnauthenticatedError", "UnavailableError",
        "UnimplementedError",
    ),
}  # fmt: skip
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)
