"""Durable output files of batch scoring: the predictions (CSV or JSONL) and the errors file.

Crash safety: each row is encoded first (``edgereg.batch.encoding``) and then written with a single
``write`` on an unbuffered file opened for appending, so a process killed at any instant leaves only
complete lines (at worst a trailing partial line if the kernel itself dies mid-write;
``edgereg.batch.resume.load_done_keys`` cuts it off before a resume). Files are ``fsync``-ed every
``fsync_every`` seconds and on close, so a power cut loses at most those seconds.

* Errors: ``<out stem>.errors.csv`` next to the output, columns ``path, reason``. It is rewritten
  by every run (a resumed run retries the inputs that failed before and lists them again if they
  still fail), so it always lists the failures among the inputs the latest run reached.
* With ``--overwrite`` the old rows, errors and identity record (``edgereg.batch.resume``) are
  removed first (:func:`discard_output`), so a run that fails half-way never leaves old rows under
  the new identity.

Failures to write are :class:`~edgereg.errors.OutputError` (exit 2) with one line naming the file
and the fix: a read-only folder, a missing parent folder, a directory in the way. A write that
fails in the middle of a run (disk full) cuts the file back to its last complete row and raises
:class:`~edgereg.errors.WriteFailedError` (exit 1); ``--resume`` continues once there is space.
"""

from __future__ import annotations

import os
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from edgereg.batch.encoding import ERROR_COLUMNS, encode_csv_row, encode_row, errors_path_for, output_format
from edgereg.batch.resume import identity_path_for
from edgereg.errors import EdgeregError, OutputError, output_error
from edgereg.preprocess.decode import file_kind


class _LineSink:
    """An append-only file (or stdout) that takes whole lines: one write call each, then flush."""

    def __init__(self, path: Path | None, *, append: bool, fsync_every: float) -> None:
        self.path = path
        self._fsync_every = fsync_every
        self._last_sync = time.monotonic()
        self._dirty = False
        if path is None:
            sys.stdout.flush()  # rows go to the byte layer: keep earlier text output in order
            self._file: IO[bytes] = sys.stdout.buffer
            self._owned = False
        else:
            if path.is_dir():
                raise OutputError(f"cannot write '{path}': a folder is in the way; choose another --out")
            # unbuffered: write() goes straight to the kernel, so a kill never leaves half a row
            try:
                self._file = open(path, "ab" if append else "wb", buffering=0)
            except OSError as exc:
                raise output_error(exc, path) from None
            self._owned = True
        self._end = self._file.seek(0, os.SEEK_END) if self._owned else 0  # after the last whole line

    def write_line(self, data: bytes) -> None:
        """Write one whole line; on failure cut the file back to its previous end and raise.

        Raises:
            WriteFailedError: the file could not take the line (disk full, I/O error).
        """
        view = memoryview(data)
        try:
            while view:  # a regular file takes it all at once; loop only for short writes
                written = self._file.write(view)
                view = view[written:] if written is not None else view[len(view):]
            self._file.flush()
        except OSError as exc:
            if not self._owned or isinstance(exc, BrokenPipeError):
                raise  # stdout: the caller handles a closed pipe
            self._cut_back()
            raise output_error(exc, self.path, mid_run=True, resumable=True) from None
        self._end += len(data)
        self._dirty = True
        if self._owned and time.monotonic() - self._last_sync >= self._fsync_every:
            self.sync()

    def _cut_back(self) -> None:
        """Drop a partly written line, so the file ends with a whole row (best effort)."""
        try:
            os.ftruncate(self._file.fileno(), self._end)
            self._file.seek(self._end)
        except OSError:
            pass

    def sync(self) -> None:
        if self._owned and self._dirty:
            try:
                os.fsync(self._file.fileno())
            except OSError as exc:
                raise output_error(exc, self.path, mid_run=True, resumable=True) from None
            self._dirty = False
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._owned and not self._file.closed:
            try:
                self.sync()
            finally:
                self._file.close()


class RowWriter(ABC):
    """Writes one output row at a time, crash-safely (see the module docstring).

    Use as a context manager; ``close()`` fsyncs.
    """

    def __init__(self, path: Path | None, columns: Sequence[str], *, append: bool = False,
                 fsync_every: float = 2.0) -> None:
        self.path = path
        self.columns = tuple(columns)
        self._sink = _LineSink(path, append=append, fsync_every=fsync_every)
        self.rows_written = 0

    @abstractmethod
    def encode(self, row: dict[str, Any]) -> bytes:
        """The row's line as bytes."""

    def write(self, row: dict[str, Any]) -> None:
        """Write one row: a dict with exactly ``self.columns`` as keys.

        Raises:
            ValueError: the row's keys are not the columns (a bug in the caller).
        """
        if tuple(row) != self.columns:
            raise ValueError(f"row keys {tuple(row)} differ from the columns {self.columns}")
        self._sink.write_line(self.encode(row))
        self.rows_written += 1

    def close(self) -> None:
        self._sink.close()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class CsvRowWriter(RowWriter):
    """CSV with a header row; ``flags`` (a sequence) is joined with ``;``."""

    def __init__(self, path: Path | None, columns: Sequence[str], *, append: bool = False,
                 fsync_every: float = 2.0) -> None:
        super().__init__(path, columns, append=append, fsync_every=fsync_every)
        if not append:
            self._sink.write_line(encode_csv_row(self.columns))

    def encode(self, row: dict[str, Any]) -> bytes:
        return encode_row(row, "csv")


class JsonlRowWriter(RowWriter):
    """One JSON object per line; ``flags`` stays a list."""

    def encode(self, row: dict[str, Any]) -> bytes:
        return encode_row(row, "jsonl")


def open_rows(out: str | os.PathLike | None, columns: Sequence[str], *, fmt: str | None = None,
              resume: bool = False, overwrite: bool = False, fsync_every: float = 2.0) -> RowWriter:
    """Open the predictions output.

    Args:
        out: the output file, or None for stdout.
        columns: the column names (see :func:`prediction_columns`).
        fmt: "csv" or "jsonl"; None derives it from ``out`` (stdout: csv).
        resume: append to an existing file (call :func:`load_done_keys` first: it validates the
            columns and cuts a partial last line). A missing file is simply created.
        overwrite: replace an existing file.
        fsync_every: seconds between fsyncs.

    Raises:
        EdgeregError: ``out`` exists and neither ``resume`` nor ``overwrite`` is set (results are
            never replaced silently), or ``resume`` with stdout.
    """
    fmt = fmt or (output_format(out) if out is not None else "csv")
    writer_class = CsvRowWriter if fmt == "csv" else JsonlRowWriter
    if out is None:
        if resume:
            raise EdgeregError("--resume needs an output file: add --out preds.csv")
        return writer_class(None, columns, fsync_every=fsync_every)
    out = Path(out)
    exists = check_output_target(out, resume=resume, overwrite=overwrite)
    return writer_class(out, columns, append=resume and exists, fsync_every=fsync_every)


def check_output_target(out: str | os.PathLike, *, resume: bool = False, overwrite: bool = False) -> bool:
    """Refuse an output path that cannot or must not be written, before any work is done.

    Returns:
        Whether ``out`` already holds data (a non-empty file).

    Raises:
        OutputError: a folder is in the way, the parent folder is missing or not a folder, or the
            folder is not writable.
        EdgeregError: ``out`` holds data and neither ``resume`` nor ``overwrite`` is set.
    """
    out = Path(out)
    if out.is_dir():
        raise OutputError(f"cannot write '{out}': a folder is in the way; choose another --out (a file name)")
    for path in (out, errors_path_for(out), identity_path_for(out)):  # a FIFO would block the open
        kind = file_kind(path.stat().st_mode) if path.exists() else None
        if kind not in (None, "directory"):
            raise OutputError(f"cannot write '{path}': not a regular file ({kind}); choose another --out "
                              "(to stream rows, leave --out out: they go to stdout)")
        if kind == "directory":
            raise OutputError(f"cannot write '{path}': a folder is in the way; choose another --out")
    parent = out.parent
    if not parent.exists():
        raise OutputError(f"cannot write '{out}': folder '{parent}' does not exist; create it first "
                          f"(mkdir -p '{parent}') or choose another --out")
    if not parent.is_dir():
        raise OutputError(f"cannot write '{out}': '{parent}' is not a folder; choose another --out")
    exists = out.exists() and out.stat().st_size > 0
    if exists and not (resume or overwrite):
        raise EdgeregError(f"'{out}' already exists; pass --resume to continue it, --overwrite to replace "
                           "it, or choose another --out")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise OutputError(f"cannot write '{out}': permission denied; choose another --out")
    return exists


def open_errors(out: str | os.PathLike, *, fsync_every: float = 2.0) -> CsvRowWriter:
    """Create (or replace) the errors file that belongs to the output ``out``."""
    return CsvRowWriter(errors_path_for(out), ERROR_COLUMNS, fsync_every=fsync_every)


def discard_output(out_path: str | os.PathLike) -> None:
    """Remove an output's rows, its errors file and its identity record, in that order (``--overwrite``).

    Call before writing the new identity: a run that then fails half-way leaves no old row under the
    new model's identity for ``--resume`` to append to. A crash between the removals leaves at most
    a record without rows, which describes nothing.

    Raises:
        OutputError: a file could not be removed (the folder is not writable).
    """
    for path in (Path(out_path), errors_path_for(out_path), identity_path_for(out_path)):
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise output_error(exc, path, fix="remove it by hand, or choose another --out") from None


__all__ = ["CsvRowWriter", "JsonlRowWriter", "RowWriter", "check_output_target", "discard_output", "open_errors",
           "open_rows"]
