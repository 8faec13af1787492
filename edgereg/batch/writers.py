"""Output files of batch scoring: predictions (CSV or JSONL), the errors file, and resume.

Crash safety: each row is encoded first and then written with a single ``write`` on an unbuffered
file opened for appending, so a process killed at any instant leaves only complete lines (at
worst a trailing partial line if the kernel itself dies mid-write; :func:`load_done_keys` cuts it
off before a resume). Files are ``fsync``-ed every ``fsync_every`` seconds and on close, so a power
cut loses at most those seconds.

Formats:

* CSV: a header row, then one row per image; numbers with 7 significant digits (the models are
  float32); the ``flags`` column joins flags with ``;``; an infinite interval bound is ``inf``.
* JSONL: one JSON object per line with the same keys; ``flags`` is a list; non-finite numbers are
  ``null``.
* Errors: ``<out stem>.errors.csv`` next to the output, columns ``path, reason``. It is rewritten
  by every run (a resumed run retries the inputs that failed before and lists them again if they
  still fail), so it always lists the failures among the inputs the latest run reached.
* Identity: ``<out>.meta.json`` (e.g. ``preds.csv.meta.json``) records who wrote the rows
  (:class:`OutputIdentity`: the model's SHA-256 and file name, its card's SHA-256, the TTA, the
  columns and the edgereg version). It is written atomically before the first row; ``--resume``
  compares it with the run about to append (:func:`check_resume_identity`) and refuses to mix
  rows of another model, card, TTA or target set. A non-empty output without its sidecar (an
  older edgereg, another tool) is refused as well: nothing says whose rows it holds. With
  ``--overwrite`` the old rows, errors and record are removed first (:func:`discard_output`), so a
  run that fails half-way never leaves old rows under the new identity.

Failures to write are :class:`~edgereg.errors.OutputError` (exit 2) with one line naming the file
and the fix: a read-only folder, a missing parent folder, a directory in the way. A write that
fails in the middle of a run (disk full) cuts the file back to its last complete row and raises
:class:`~edgereg.errors.WriteFailedError` (exit 1); ``--resume`` continues once there is space.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any

from edgereg.errors import EdgeregError, OutputError, output_error
from edgereg.preprocess.decode import file_kind

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


def prediction_columns(names: Sequence[str], *, with_spread: bool, with_interval: bool = False,
                       audit: Sequence[str] = ()) -> tuple[str, ...]:
    """The output columns for target ``names``: ``path``, each target (followed by ``name_lo``,
    ``name_hi`` with intervals), each ``name_spread`` (with TTA), ``flags``, then the ``audit``
    columns (``edgereg.lab.audit.AUDIT_COLUMNS`` with --audit)."""
    targets = tuple(c for name in names for c in ((name, f"{name}_lo", f"{name}_hi") if with_interval else (name,)))
    spread = tuple(f"{name}_spread" for name in names) if with_spread else ()
    return ("path", *targets, *spread, "flags", *audit)


def _format_number(value: Any) -> str:
    if value is None:  # a withheld reading: an empty cell
        return ""
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


def encode_row(row: dict[str, Any], fmt: str) -> bytes:
    """An output row as the row writers write it: a CSV line (``flags`` joined with ``;``) or a JSON
    line (``flags`` a list). For code that writes whole blocks of rows (``edgereg.cluster``)."""
    if fmt == "csv":
        return encode_csv_row([FLAG_SEPARATOR.join(v) if isinstance(v, (list, tuple)) else v for v in row.values()])
    return encode_jsonl_row({k: list(v) if isinstance(v, tuple) else v for k, v in row.items()})


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
    # "\n" only: str.splitlines would also split at U+2028, U+0085, ... that JSON keeps raw in a path
    for line, raw in enumerate(text.split("\n")[:-1], start=1):
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


# ------------------------------------------------------------------------------------ identity

IDENTITY_FORMAT = 1
IDENTITY_SUFFIX = ".meta.json"
# What must match for rows to belong together; the file name and the version are recorded only.
IDENTITY_KEYS = ("model_sha256", "card_sha256", "tta", "columns", "readings")


def identity_path_for(out: str | os.PathLike) -> Path:
    """``preds.csv`` -> ``preds.csv.meta.json`` (next to the output)."""
    out = Path(out)
    return out.with_name(out.name + IDENTITY_SUFFIX)


def sha256_of_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class OutputIdentity:
    """Who wrote the rows of an output: what ``--resume`` must match before appending.

    Attributes:
        model_sha256: hex SHA-256 of the model file's bytes.
        model_name: the model file's name (recorded, not compared: a copy may be renamed).
        tta: the TTA the rows were read with ("none", "d4", "rot:N").
        columns: the output columns (path, targets, spreads, flags, ...).
        edgereg_version: the edgereg that wrote them (recorded, not compared).
        card_sha256: hex SHA-256 of the model card's JSON in use ("" when not known); differs
            from the embedded card's when ``--card`` replaced it.
        readings: how the values were made beyond the card: the interval level and whether the
            card's calibration was applied, e.g. ``"confidence 0.9, calibration 3f1c..."`` ("" when
            not known; docs/lab-grade.md).
    """

    model_sha256: str
    model_name: str
    tta: str
    columns: tuple[str, ...]
    edgereg_version: str
    card_sha256: str = ""
    readings: str = ""

    @classmethod
    def for_model(cls, model_path: str | os.PathLike, *, tta: str, columns: Sequence[str],
                  card_json: str | None = None, readings: str = "") -> OutputIdentity:
        """The identity of rows written by ``model_path`` (hashing the file) with ``tta`` and ``columns``."""
        from edgereg import __version__

        card_sha = hashlib.sha256(card_json.encode()).hexdigest() if card_json is not None else ""
        return cls(model_sha256=sha256_of_file(model_path), model_name=Path(model_path).name, tta=str(tta),
                   columns=tuple(columns), edgereg_version=__version__, card_sha256=card_sha, readings=readings)

    def to_dict(self) -> dict[str, Any]:
        return {"format": IDENTITY_FORMAT, **asdict(self), "columns": list(self.columns)}

    @classmethod
    def from_dict(cls, data: Any) -> OutputIdentity:
        """Raises ValueError for anything that is not an identity record."""
        if not isinstance(data, dict) or data.get("format") != IDENTITY_FORMAT:
            raise ValueError("not an edgereg output identity (format 1)")
        names = {f.name for f in fields(cls)}
        values = {key: data[key] for key in names if key in data}
        if set(values) < names - {"card_sha256", "readings"}:
            raise ValueError(f"missing fields {sorted(names - set(values))}")
        if not isinstance(values["columns"], list) or not all(isinstance(c, str) for c in values["columns"]):
            raise ValueError("'columns' must be a list of names")
        values["columns"] = tuple(values["columns"])
        if not all(isinstance(values[k], str) for k in names - {"columns"} if k in values):
            raise ValueError("fields other than 'columns' must be strings")
        return cls(**values)

    def differences(self, other: OutputIdentity) -> list[str]:
        """The compared fields (:data:`IDENTITY_KEYS`) whose values differ; a blank card hash matches any."""
        differ = []
        for key in IDENTITY_KEYS:
            mine, theirs = getattr(self, key), getattr(other, key)
            if key in ("card_sha256", "readings") and (not mine or not theirs):
                continue
            if mine != theirs:
                differ.append(key)
        return differ

    def describe(self) -> str:
        """``model.int8.onnx (sha256 1f2e3d4c5b6a), tta none, columns [path, conc, flags]``."""
        card = f", card {self.card_sha256[:12]}" if self.card_sha256 else ""
        readings = f", {self.readings}" if self.readings else ""
        return (f"{self.model_name} (sha256 {self.model_sha256[:12]}{card}), tta {self.tta}{readings}, "
                f"columns [{', '.join(self.columns)}]")


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers only ever see the old file or the whole new one
    (a temporary file in the same folder, fsync, rename); on failure nothing is left behind.

    Raises:
        OutputError: the folder is missing or not writable, or the disk is full.
    """
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"cannot write '{target}': a folder is in the way; move it or choose another output")
    temp = None
    try:
        handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp",
                                             delete=False)
        temp = handle.name
        with handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
        temp = None
    except OSError as exc:
        raise output_error(exc, target, fix="choose another output folder") from None
    finally:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)
    return target


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


def write_identity(out_path: str | os.PathLike, identity: OutputIdentity) -> Path:
    """Write ``<out>.meta.json`` atomically (a temporary file in the same folder, then rename).

    Raises:
        OutputError: the folder is not writable.
    """
    return atomic_write(identity_path_for(out_path), (json.dumps(identity.to_dict(), indent=2) + "\n").encode())


def read_identity(out_path: str | os.PathLike) -> OutputIdentity | None:
    """The identity recorded next to ``out_path``, or None when there is no sidecar.

    Raises:
        EdgeregError: the sidecar exists but is not a readable identity record.
    """
    target = identity_path_for(out_path)
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeregError(f"cannot read '{target}' ({exc}); move it and '{out_path}' away, or use --overwrite") \
            from None
    try:
        return OutputIdentity.from_dict(json.loads(text))
    except (json.JSONDecodeError, ValueError, TypeError) as exc:
        raise EdgeregError(f"'{target}' is not an edgereg output record ({exc}); move it and '{out_path}' away, "
                           "or use --overwrite") from None


def _holds_rows(out: Path) -> bool:
    """Whether ``out`` has any line after a CSV header (or any line of JSONL): rows to protect."""
    try:
        with open(out, "rb") as handle:
            head = handle.read(1 << 16)
    except OSError:
        return True
    lines = [line for line in head.split(b"\n") if line.strip()]
    header_lines = 1 if out.suffix.lower() == ".csv" else 0
    return len(lines) > header_lines


def check_resume_identity(out_path: str | os.PathLike, identity: OutputIdentity) -> None:
    """Refuse a ``--resume`` that would append rows of another model, card, TTA or target set.

    Nothing to check when ``out_path`` is missing or holds no rows. Call before appending, then
    :func:`write_identity`.

    Raises:
        EdgeregError: the recorded identity differs (the message names both), or the output holds
            rows but has no identity record.
    """
    out = Path(out_path)
    if not out.is_file() or not _holds_rows(out):
        return
    recorded = read_identity(out)
    if recorded is None:
        raise EdgeregError(f"cannot resume '{out}': nothing records which model wrote its rows "
                           f"({identity_path_for(out).name} is missing: an older edgereg or another tool wrote "
                           "it); use --overwrite to start again, or choose another --out")
    differ = recorded.differences(identity)
    if differ:
        what = ", ".join({"model_sha256": "the model", "card_sha256": "the model card", "tta": "the TTA",
                          "columns": "the columns (targets)",
                          "readings": "the --confidence or --no-calibration"}[key] for key in differ)
        raise EdgeregError(f"cannot resume '{out}': its rows come from {recorded.describe()}, this run is "
                           f"{identity.describe()} ({what} differ); use the same model and --tta as the first "
                           "run, --overwrite to start again, or another --out")
