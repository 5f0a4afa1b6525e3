"""REST bodies sent gzip-encoded, inflated as TF Serving's HTTP server inflates them
(util/net_http/compression/gzip_zlib.cc), without ever holding more than its limit."""

from __future__ import annotations

import struct
import zlib

# ZLib::kMaxUncompressedBytes, TF Serving's cap on an inflated request body.
GZIP_LIMIT = 100 * 2**20
# Inflating: compressed bytes fed, and bytes inflated, per step.
_GZIP_IN_STEP = 1 << 16
_GZIP_OUT_STEP = 1 << 20


class GzipError(ValueError):
    """A gzip body that cannot be inflated, or that inflates past the limit."""


def inflate_gzip(body: bytes, limit: int) -> bytearray:
    """A gzip body inflated, holding at most `limit` bytes (plus one step) at any time.

    The size the trailer states (ISIZE) is checked first, as TF Serving's zlib does; a
    trailer that understates the size is caught as soon as more comes out.
    """
    if len(body) < 18 or body[:2] != b"\x1f\x8b":
        raise GzipError("the gzip-encoded body is not gzip data")
    (stated,) = struct.unpack("<I", body[-4:])
    if stated > limit:
        raise GzipError(
            f"the gzip-encoded body inflates to {stated} bytes, more than this server's "
            f"limit of {limit}"
        )
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = bytearray()
    view = memoryview(body)
    try:
        for start in range(0, len(view), _GZIP_IN_STEP):
            pending: bytes | memoryview = view[start : start + _GZIP_IN_STEP]
            while True:
                chunk = inflater.decompress(pending, _GZIP_OUT_STEP)
                out += chunk
                if len(out) > stated:
                    raise GzipError(
                        f"the gzip-encoded body inflates to more than the {stated} bytes "
                        "its trailer states"
                    )
                pending = inflater.unconsumed_tail
                # A full step may leave output inside zlib with no input left: go on.
                if inflater.eof or (not pending and len(chunk) < _GZIP_OUT_STEP):
                    break
            if inflater.eof:
                break
    except zlib.error as error:
        raise GzipError(f"the gzip-encoded body is corrupt ({error})") from None
    if not inflater.eof:
        raise GzipError("the gzip-encoded body is truncated")
    return out
