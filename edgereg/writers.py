"""Output files of batch scoring: predictions (CSV or JSONL), the errors file, and resume.

Crash safety: each row is encoded first and then written with a single ``write`` on an unbuffered
file opened for appending, so a process killed at any instant leaves only complete lines (at
worst a trailing partial line if the kernel itself dies mid-write; :func:`load_done_keys` cuts it
off before a resume). Files are ``fsync``-ed every ``fsync_every`` seconds and on close, so a power
cut loses at most those seconds.

Formats:

* CSV: a header row, then one row per image; numbers with 7 significant digits (the models are
  float32); the ``flags`` column joins flags with ``;``.
* JSONL: one JSON object per line with the same keys; ``flags`` is a list; non-finite numbers are
  ``null``.
* Errors: ``<out stem>.errors.csv`` next to the output, columns ``path, reason``. It is rewritten
  by every run (a resumed run retries the inputs that failed before and lists them again if they
  still fail), so it always lists the failures among the inputs the latest run reached.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from edgereg.errors import EdgeregError

ENCODING = "utf-8"
ENCODING_ERRORS = "surrogateescape"  # paths that are not UTF-8 round-trip byte for byte
FLAG_SEPARATOR = ";"
ERROR_COLUMNS = ("path", "reason")


def output_format(path: str | os.PathLike) -> str:
    """'csv' or 'jsonl' from the file name.

    Raises:
        EdgeregError: any other suffix.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    raise EdgeregError(f"--out must end in .csv or .jsonl, got '{path}'; e.g. --out preds.csv")


def errors_path_for(out: str | os.PathLike) -> Path:
    """``preds.csv`` -> ``preds.errors.csv`` (the same folder, whatever the output format)."""
    out = Path(out)
    return out.with_name(out.stem + ".errors.csv")


def prediction_columns(names: Sequence[str], *, with_spread: bool) -> tuple[str, ...]:
    """``("path", *names, *[name_spread], "flags")``: the output columns for target ``names``."""
    spread = tuple(f"{name}_spread" for name in names) if with_spread else ()
    return ("path", *names, *spread, "flags")


def _format_number(value: Any) -> str:
    if isinstance(value, float):
        return format(value, ".7g")
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def encode_csv_row(values: Sequence[Any]) -> bytes:
    """One CSV line (quoted as needed, ``\\n``-terminated) as bytes."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([_format_number(v) for v in values])
    return buffer.getvalue().encode(ENCODING, ENCODING_ERRORS)


def encode_jsonl_row(row: dict[str, Any]) -> bytes:
    """One JSON object on one line (newlines in strings are escaped) as bytes."""
    clean = {key: _json_value(value) for key, value in row.items()}
    return (json.dumps(clean, ensure_ascii=False) + "\n").encode(ENCODING, ENCODING_ERRORS)


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
            # unbuffered: write() goes straight to the kernel, so a kill never leaves half a row
            self._file = open(path, "ab" if append else "wb", buffering=0)  # noqa: SIM115
            self._owned = True

    def write_line(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # a regular file takes it all at once; loop only for short writes
            written = self._file.write(view)
            view = view[written:] if written is not None else view[len(view):]
        self._file.flush()
        self._dirty = True
        if self._owned and time.monotonic() - self._last_sync >= self._fsync_every:
            self.sync()

    def sync(self) -> None:
        if self._owned and self._dirty:
            os.fsync(self._file.fileno())
            self._dirty = False
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._owned and not self._file.closed:
            self.sync()
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

    def write_many(self, rows: Iterable[dict[str, Any]], *, chunk_bytes: int = 1 << 20) -> None:
        """Write many rows, about ``chunk_bytes`` per write call (for rebuilding a whole file; a
        kill can then leave a partial last line, which :func:`cut_partial_line` removes).

        Raises:
            ValueError: a row's keys are not the columns.
        """
        chunk: list[bytes] = []
        size = 0
        for row in rows:
            if tuple(row) != self.columns:
                raise ValueError(f"row keys {tuple(row)} differ from the columns {self.columns}")
            line = self.encode(row)
            chunk.append(line)
            size += len(line)
            if size >= chunk_bytes:
                self._sink.write_line(b"".join(chunk))
                self.rows_written += len(chunk)
                chunk, size = [], 0
        if chunk:
            self._sink.write_line(b"".join(chunk))
            self.rows_written += len(chunk)

    def close(self) -> None:
        self._sink.close()

    def __enter__(self) -> "RowWriter":
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
        values = [FLAG_SEPARATOR.join(v) if isinstance(v, (list, tuple)) else v for v in row.values()]
        return encode_csv_row(values)


class JsonlRowWriter(RowWriter):
    """One JSON object per line; ``flags`` stays a list."""

    def encode(self, row: dict[str, Any]) -> bytes:
        return encode_jsonl_row({k: list(v) if isinstance(v, tuple) else v for k, v in row.items()})


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
    exists = out.exists() and out.stat().st_size > 0
    if exists and not (resume or overwrite):
        raise EdgeregError(f"'{out}' already exists; pass --resume to continue it, --overwrite to replace "
                           "it, or choose another --out")
    return writer_class(out, columns, append=resume and exists, fsync_every=fsync_every)


def open_errors(out: str | os.PathLike, *, fsync_every: float = 2.0) -> CsvRowWriter:
    """Create (or replace) the errors file that belongs to the output ``out``."""
    return CsvRowWriter(errors_path_for(out), ERROR_COLUMNS, fsync_every=fsync_every)


def cut_partial_line(path: str | os.PathLike) -> int:
    """Truncate a file after its last newline; returns the number of bytes removed.

    A run killed in the middle of a write (only possible if the machine itself went down) can
    leave a last line without its newline; it is incomplete and must not be kept.
    """
    path = Path(path)
    with open(path, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        position = size
        chunk = 1 << 16
        while position > 0:
            start = max(0, position - chunk)
            handle.seek(start)
            block = handle.read(position - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            position = start
        else:
            keep = 0
        if keep < size:
            handle.truncate(keep)
        return size - keep


def load_done_keys(out: str | os.PathLike, columns: Sequence[str], *, fmt: str | None = None) -> set[str]:
    """The ``path`` values already in an output file, for ``--resume``.

    Cuts a partial last line first and checks that the file has the columns this run writes.

    Returns:
        The set of paths already scored (empty when the file does not exist or is empty).

    Raises:
        EdgeregError: the columns differ (another model, other targets or another --tta), or a
            line cannot be parsed.
    """
    out = Path(out)
    if not out.exists():
        return set()
    fmt = fmt or output_format(out)
    cut_partial_line(out)
    text = out.read_bytes().decode(ENCODING, ENCODING_ERRORS)
    if not text:
        return set()
    columns = tuple(columns)
    fix = "use the same model and --tta as the first run, or another --out"
    if fmt == "csv":
        rows = csv.reader(io.StringIO(text, newline=""))
        header = tuple(next(rows))
        if header != columns:
            raise EdgeregError(f"cannot resume '{out}': its columns are {list(header)}, this run writes "
                               f"{list(columns)}; {fix}")
        done = set()
        for line, row in enumerate(rows, start=2):
            if len(row) != len(columns):
                raise EdgeregError(f"cannot resume '{out}': row {line} has {len(row)} fields, expected "
                                   f"{len(columns)}; repair or move the file")
            done.add(row[0])
        return done
    done = set()
    for line, raw in enumerate(text.splitlines(), start=1):
        try:
            record = json.loads(raw)
        except json.JSONDecodeError:
            raise EdgeregError(f"cannot resume '{out}': line {line} is not JSON; repair or move the file") from None
        if not isinstance(record, dict) or tuple(record) != columns:
            got = list(record) if isinstance(record, dict) else type(record).__name__
            raise EdgeregError(f"cannot resume '{out}': line {line} has keys {got}, this run writes "
                               f"{list(columns)}; {fix}")
        done.add(record["path"])
    return done
