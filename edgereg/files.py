"""Atomic file writes: readers see the old file or the whole new one, never half of it.

Every file edgereg writes in one piece (a model, a card, a run's JSON and checkpoints, a merged
output, a manifest, a labels file) goes through here: the bytes go to a temporary file in the
target's folder, are flushed and fsync-ed, and the temporary file is renamed over the target
(``os.replace``, atomic on one file system). On any error, or an interrupt, the temporary file is
removed and the target is left as it was.

* :func:`atomic_path`: a context manager that yields the temporary path, for writers that take a
  file name (``onnx.save``, ``np.savez``, a text-mode ``csv.writer``) and for checks that must pass
  before the file appears (raise inside the block: nothing is written).
* :func:`atomic_replace`: ``bytes`` (or a sequence of chunks) to a file in one call; failures are
  the ``OSError`` itself (for callers with their own wording: training runs, parts of a Ray run).
* :func:`atomic_write`: :func:`atomic_replace` for an output the user named, with failures as a
  typed :class:`~edgereg.errors.OutputError` naming the file and the fix.
* :func:`fsync_folder`: make a rename in a folder durable.

Temporary files are named ``.<name>.<pid>-<random>.tmp`` (hidden, in the same folder) unless the
caller names one (e.g. ``model.onnx.partial``, which ``edgereg export`` cleans up after a crash).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

from edgereg.errors import OutputError, output_error


def fsync_folder(path: str | os.PathLike) -> None:
    """Make a rename in folder ``path`` durable (a no-op where folders cannot be opened or synced,
    e.g. Windows)."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _temporary_name(target: Path) -> str:
    return f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"


def _fsync_file(path: Path) -> None:
    with open(path, "r+b") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, temp_name: str | None = None,
                sync_folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends normally the file written there
    is fsync-ed and renamed over ``path``; when it raises, the temporary file is removed.

    Args:
        path: the target file.
        temp_name: the temporary file's name in the same folder (default: a hidden unique name).
        sync_folder: also fsync the folder after the rename (the rename survives a power cut).

    Raises:
        OSError: the temporary file could not be synced or renamed (and whatever the block raises);
            the target is then unchanged.
    """
    target = Path(path)
    temp = target.with_name(temp_name or _temporary_name(target))
    try:
        yield temp
        _fsync_file(temp)
        os.replace(temp, target)
    except BaseException:  # a full disk, an interrupt: no temporary file is left behind
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    if sync_folder:
        fsync_folder(target.parent)


def atomic_replace(path: str | os.PathLike, data: bytes | Iterable[bytes], *, temp_name: str | None = None,
                   sync_folder: bool = False) -> Path:
    """Write ``data`` (bytes, or chunks of bytes written in order) to ``path`` atomically.

    Args:
        path: the target file.
        data: the whole content, or an iterable of byte chunks (e.g. rows).
        temp_name: the temporary file's name in the same folder (default: a hidden unique name).
        sync_folder: also fsync the folder after the rename.

    Returns:
        ``path`` as a Path.

    Raises:
        OSError: the file could not be written; the target is unchanged.
    """
    target = Path(path)
    chunks = (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data
    with atomic_path(target, temp_name=temp_name, sync_folder=sync_folder) as temp, open(temp, "wb") as handle:
        for chunk in chunks:
            handle.write(chunk)
    return target


def atomic_write(path: str | os.PathLike, data: bytes, *, fix: str = "choose another output folder") -> Path:
    """:func:`atomic_replace` for an output the user named (a report, a model, a record).

    Raises:
        OutputError: a folder is in the way, the folder is missing or not writable, or the disk is
            full (one line naming the file and ``fix``).
    """
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"cannot write '{target}': a folder is in the way; move it or choose another output")
    try:
        return atomic_replace(target, data)
    except OSError as exc:
        raise output_error(exc, target, fix=fix) from None


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (model identity for resume and audit)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


__all__ = ["atomic_path", "atomic_replace", "atomic_write", "fsync_folder", "sha256_file"]
