"""Atomic, durable file writing: a reader sees the old file or the whole new one, never a
part, and after a power cut the same holds (the file is on disk before its rename, and the
rename before the write returns)."""

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
        _sync(temporary)
        os.replace(temporary, path)
        sync_directory(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)


def sync_directory(folder: str | os.PathLike) -> None:
    """Makes a folder's entries (a rename into it) durable."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def sync_tree(folder: str | os.PathLike) -> None:
    """Makes every file and folder under `folder` durable, before it is renamed into view."""
    for root, _, files in os.walk(folder):
        for name in files:
            _sync(Path(root, name))
        sync_directory(root)


def _sync(file: str | os.PathLike) -> None:
    """Flushes a file's content to the disk."""
    descriptor = os.open(file, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


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
