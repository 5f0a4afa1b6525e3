"""Atomic file writing: a reader sees the old file or the whole new one, never a part."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renames it onto `path` if the block succeeds.

    The temporary name starts with a dot and keeps the suffix, so writers that pick the
    format from the suffix still work and directory listings skip it. On an error the
    temporary file is removed and `path` is untouched. The file gets the permissions of
    any new file (0666 less the umask), so others can read what was written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _create_unique(path)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)


def _create_unique(path: Path) -> Path:
    """Creates an empty, hidden, uniquely named file beside `path`; returns its path."""
    while True:
        temporary = path.with_name(f".{path.stem}.{secrets.token_hex(6)}.partial{path.suffix}")
        try:
            # Not tempfile.mkstemp: its files are private (0600), and a model or mask
            # written for a lab's shared folder must be readable like any other file.
            os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return temporary
