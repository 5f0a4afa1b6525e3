"""`unet-client`: segment PNG and TIFF images on a TF Serving server, or show model status.

    unet-client segment INPUT -o OUTPUT [--server HOST:PORT] [--model NAME]
                [--version N | --label L] [--rest]
    unet-client status [--server HOST:PORT] [--model NAME] [--rest]

`--rest` makes the same calls over TF Serving's REST API (port 8501 by default) instead
of gRPC (8500), for networks that pass only HTTP/1.1.

`segment` writes OUTPUT/<stem>.png for an image file or for each PNG/TIFF in a folder.
For a model that sees neighbouring sections (its record's `context_sections` K > 0), a
folder is one stack of sections in name order, as `unet-keras predict` reads it, and each
request carries a section with the K above and below it as channels (`io.context`). An
image that fails is named on stderr and the others still run (exit status 1); an error
that stops the whole run is one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib.util import find_spec
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from unet_keras.client.config import MIB, ChannelConfig
from unet_keras.client.core import available_version, describe
from unet_keras.client.errors import ServingError
from unet_keras.client.protocol import Version
from unet_keras.client.sync import SegmentationClient
from unet_keras.inference.inference_settings import InstanceConfig
from unet_keras.inference.instances import INSTANCE_METHODS, label_objects
from unet_keras.io.atomic import atomic_path
from unet_keras.io.context import check_stack, context_indices
from unet_keras.io.masks import mask_to_labels
from unet_keras.io.sample import DataError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")


class UsageError(Exception):
    """An error in the command line or the input that stops the whole run."""


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `unet-client`; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return args.command(args)
    except (UsageError, ServingError, OSError, ValueError, MemoryError) as error:
        print(f"unet-client: {_one_line(str(error))}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unet-client", description="Client for the U-Net served by TensorFlow Serving."
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    segment = commands.add_parser("segment", help="segment an image file or a folder of them")
    segment.add_argument("input", type=Path, help="a PNG or TIFF image, or a folder of them")
    segment.add_argument(
        "-o", "--output", type=Path, required=True, help="folder for the <stem>.png masks"
    )
    segment.add_argument(
        "--concurrency", type=_positive, default=4, help="requests in flight (default: 4)"
    )
    segment.add_argument(
        "--instances",
        choices=INSTANCE_METHODS,
        help="also write the labelled objects as <stem>_labels.tif (uint32), as unet-keras "
        "predict does; needs the instances extra",
    )
    segment.add_argument(
        "--seed-height", type=float, default=16.0, help="watershed: seed height in pixels"
    )
    segment.add_argument(
        "--min-object-size", type=_positive, default=16, help="watershed: smallest object"
    )
    segment.set_defaults(command=_segment)
    status = commands.add_parser("status", help="print the model's version states as JSON")
    status.set_defaults(command=_status)
    for command in (segment, status):
        _connection_arguments(command)
    return parser


def _connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        help="HOST:PORT of the server's gRPC port, or of its REST port with --rest "
        "(default: localhost:8500, or localhost:8501 with --rest)",
    )
    parser.add_argument(
        "--rest", action="store_true", help="call TF Serving's REST API instead of gRPC"
    )
    parser.add_argument("--model", default="unet", help="model name (default: unet)")
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to this long for the server and an AVAILABLE version (default: 0)",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--version", type=_version, help="version number or label (default: the latest)"
    )
    which.add_argument(
        "--label", dest="version", help="version label, e.g. stable or canary (version_labels)"
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds per request (default: 60)"
    )
    parser.add_argument(
        "--max-message-mb",
        type=_positive,
        default=256,
        help="message limit in MiB (REST: of the JSON); larger images are tiled (default: 256)",
    )
    parser.add_argument("--compression", choices=("gzip", "deflate"), help="compress calls")
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument("--ca-cert", type=Path, help="PEM roots to trust (with --tls)")
    parser.add_argument("--client-cert", type=Path, help="PEM client certificate (mutual TLS)")
    parser.add_argument("--client-key", type=Path, help="PEM client private key (mutual TLS)")
    parser.add_argument("--server-name", help="name the server's certificate must carry")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _version(text: str) -> Version:
    return int(text) if text.isdigit() else text


def _client(args: argparse.Namespace) -> SegmentationClient:
    def read(path: Path | None) -> bytes | None:
        return None if path is None else path.read_bytes()

    if not args.tls and (args.ca_cert or args.client_cert or args.client_key or args.server_name):
        raise UsageError("--ca-cert, --client-cert, --client-key and --server-name need --tls")
    if args.rest and (args.compression or args.server_name):
        raise UsageError("--compression and --server-name are gRPC settings: not with --rest")
    limit = args.max_message_mb * MIB
    channel = ChannelConfig(
        tls=args.tls,
        root_certificates=read(args.ca_cert),
        private_key=read(args.client_key),
        certificate_chain=read(args.client_cert),
        server_name=args.server_name,
        max_send_bytes=limit,
        max_receive_bytes=limit,
        compression=args.compression,
    )
    server = args.server or ("localhost:8501" if args.rest else "localhost:8500")
    transport = "rest" if args.rest else "grpc"
    return SegmentationClient(
        server, args.model, timeout=args.timeout, channel=channel, transport=transport
    )


def _status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.wait:
            client.wait_until_available(timeout=args.wait)
        states = client.model_status(args.version)
    print(json.dumps({"model": args.model, "versions": states}, indent=2))
    return 0


def _segment(args: argparse.Namespace) -> int:
    images = _inputs(args.input)
    if args.instances:
        _require_instances_extra()
    _refuse_overwriting(images, args.output)
    args.output.mkdir(parents=True, exist_ok=True)
    with _client(args) as client:
        if args.wait:
            client.wait_until_available(timeout=args.wait)
        # One cheap call first, so that an unreachable server or an unknown model is one
        # error rather than one per image.
        states = client.model_status(args.version if isinstance(args.version, int) else None)
        if available_version(states) is None:
            raise UsageError(f"model {args.model!r} has no AVAILABLE version: {describe(states)}")
        objects = InstanceConfig(args.instances, args.seed_height, args.min_object_size)
        # One record serves all: its mask convention turns served masks back into classes,
        # its context_sections says what a request carries.
        record = client.model_record(args.version)
        read = _read
        if record.context_sections:
            images, read = _sections(args.input, record.context_sections, args.concurrency)

        def one(path: Path) -> str | None:
            try:
                mask = client.segment(read(path), version=args.version).mask
                _write_png(mask, args.output / f"{path.stem}.png")
                if args.instances:
                    classes = mask_to_labels(mask, record.mask, str(path))
                    _write_labels(label_objects(classes, objects), args.output, path)
            except (
                ServingError,
                OSError,
                ValueError,
                MemoryError,
                Image.DecompressionBombError,
            ) as error:
                return f"unet-client: {path}: {_one_line(str(error))}"
            return None

        failures = 0
        progress = tqdm(total=len(images), unit="image", disable=None if len(images) > 1 else True)
        with progress, ThreadPoolExecutor(args.concurrency) as pool:
            for failure in pool.map(one, images):
                progress.update()
                if failure:
                    failures += 1
                    progress.write(failure, file=sys.stderr)
    return 1 if failures else 0


def _refuse_overwriting(images: list[Path], output: Path) -> None:
    """Stops before anything is written when a mask would replace one of the inputs."""
    inputs = {image.resolve() for image in images}
    for image, target in (
        (image, output / f"{image.stem}{name}") for image in images
        for name in (".png", "_labels.tif")
    ):  # fmt: skip
        if target.resolve() in inputs:
            raise UsageError(
                f"-o {output}: writing {target.name} would overwrite the input {image}; "
                "choose another output folder"
            )


def _inputs(path: Path) -> list[Path]:
    """The image files to segment: `path` itself, or a folder's PNGs and TIFFs."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UsageError(f"{path}: no such file or folder")
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UsageError(f"{path}: no PNG or TIFF images (expected {', '.join(IMAGE_SUFFIXES)})")
    stems: dict[str, Path] = {}
    for image in images:
        if image.stem in stems:
            raise UsageError(
                f"{stems[image.stem].name} and {image.name} would both be written as "
                f"{image.stem}.png"
            )
        stems[image.stem] = image
    return images


def _sections(
    path: Path, k: int, concurrency: int
) -> tuple[list[Path], Callable[[Path], np.ndarray]]:
    """A folder's images as one stack in `unet-keras predict`'s order, and a reader of a
    section with its K neighbours on each side as channels (mirrored at the stack's ends).

    Requests go out in stack order, `concurrency` at a time: the sections of the last few
    are kept decoded, so each file is read about once, not 2K + 1 times."""
    from unet_keras.io.readers import list_images  # only for models with context

    try:
        check_stack(1 if path.is_file() else 2, k, str(path))
        stack = list(list_images(path).values())
        check_stack(len(stack), k, str(path))
    except DataError as error:
        raise UsageError(str(error)) from None
    where = {section: index for index, section in enumerate(stack)}
    decoded = functools.lru_cache(maxsize=(2 * k + 1) * (concurrency + 1))(
        lambda section: _channels(_read(section))
    )

    def read(section: Path) -> np.ndarray:
        own = decoded(section)
        parts = []
        for index in context_indices(len(stack), where[section], k):
            part = decoded(stack[index])
            if (part.shape, part.dtype) != (own.shape, own.dtype):
                raise ValueError(
                    f"its neighbour {stack[index].name} is {part.shape} {part.dtype}, "
                    f"unlike its {own.shape} {own.dtype}: a stack's sections are alike"
                )
            parts.append(part)
        return np.concatenate(parts, axis=-1)

    return stack, read


def _channels(image: np.ndarray) -> np.ndarray:
    """[H, W] grey as [H, W, 1]; [H, W, C] as it is."""
    return image[..., np.newaxis] if image.ndim == 2 else image


def _read(path: Path) -> np.ndarray:
    """An image file as an array in its own dtype: [H, W] grey or [H, W, C]."""
    with Image.open(path) as image:
        if getattr(image, "n_frames", 1) > 1:
            raise ValueError(f"{image.n_frames} pages; expected a single image")
        if image.mode in ("1", "P"):
            image = image.convert("L")
        return np.asarray(image)


def _write_png(mask: np.ndarray, target: Path) -> None:
    """Writes the mask as a PNG that appears whole or not at all."""
    with atomic_path(target) as partial:
        Image.fromarray(mask).save(partial, format="PNG")


def _require_instances_extra() -> None:
    """Stops before any request when --instances cannot write its labels."""
    missing = [name for name in ("scipy", "skimage", "tifffile") if find_spec(name) is None]
    if missing:
        raise UsageError(
            f"--instances needs {', '.join(missing)}: pip install 'unet-keras[client,instances]'"
        )


def _write_labels(objects: np.ndarray, output: Path, path: Path) -> None:
    """Writes an image's labelled objects as <stem>_labels.tif, whole or not at all."""
    from unet_keras.io.writers import write_image  # tifffile: the instances extra

    write_image(output / f"{path.stem}_labels.tif", objects)


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
