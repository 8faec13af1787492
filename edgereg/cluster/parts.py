"""Exactly-once output of a distributed run: parts committed atomically, a manifest, an idempotent merge.

While an ``--engine ray`` run writes ``preds.csv``, its state lives in ``preds.csv.parts/``:

* ``manifest.jsonl``: a header line ``{"edgereg_parts": 1, "identity": {...}}`` (what the run
  produces: model, columns, format, TTA, shard, order), then one line per committed part:
  ``{"part": "g0001-000003.jsonl", "generation": 1, "rows": 4096, "errors": 2}``.
* part files: one JSON record per line, ``{"row": {...}}`` (an output row, floats exact) or
  ``{"error": {"path": ..., "reason": ...}}``.

Committing a part: write ``.NAME.tmp``, fsync, rename to ``NAME``, fsync the folder, then append
its manifest line (one write, fsync). The manifest line is the commit: a part file without one (a
crash between the rename and the append) is an orphan, deleted on resume, and its rows are scored
again. So every row is either in exactly one committed part or in none.

A *generation* is one invocation. Resuming (``--resume``) reads the manifest (cutting a partial
last line), skips the keys already in committed rows and scores the rest as the next generation;
inputs that failed before are tried again, as the local engine does. An existing output without
a state folder (a local-engine run, or a finished run) is imported as generation 0 and its keys
skipped likewise.

The merge writes the output from the committed parts alone, through the same row writers as the
local engine (so the bytes match), to ``preds.csv.merging``, fsyncs and renames it over
``preds.csv``; the errors file likewise, from the latest generation (the local engine rewrites it
on every run for the same reason: earlier failures were retried). Rows are ordered by the inputs'
current positions (a stable sort, so rows of keys no longer listed come first, in their old
order), or kept in commit order for ``--unordered``. Merging again gives the same bytes; the state
folder is removed after the merge (manifest first), so a crash at any point leaves either the
state, from which ``--resume`` merges again, or the finished output.
"""

from __future__ import annotations

import heapq
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgereg.errors import EdgeregError
from edgereg.writers import (
    ERROR_COLUMNS, CsvRowWriter, cut_partial_line, errors_path_for, load_done_keys, open_rows, output_format,
)

FORMAT_VERSION = 1
MANIFEST = "manifest.jsonl"
STATE_SUFFIX = ".parts"
MERGING_SUFFIX = ".merging"
NEVER = float("inf")  # fsync interval of the merge writers: they fsync once, on close


def state_dir_for(out: str | os.PathLike) -> Path:
    """``preds.csv`` -> ``preds.csv.parts`` (next to the output)."""
    out = Path(out)
    return out.with_name(out.name + STATE_SUFFIX)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
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


def _encode(record: Mapping[str, Any]) -> bytes:
    """One part record as a JSON line (NaN/inf kept: Python's json round-trips them exactly)."""
    return (json.dumps(record, ensure_ascii=True) + "\n").encode("ascii")


def row_record(row: Mapping[str, Any]) -> bytes:
    return _encode({"row": dict(row)})


def error_record(key: str, reason: str) -> bytes:
    return _encode({"error": {"path": key, "reason": reason}})


@dataclass(frozen=True)
class Part:
    """One committed part (a manifest line)."""

    name: str
    generation: int
    rows: int
    errors: int


class PartStore:
    """The state folder of one output (see the module docstring). Create with :meth:`open`."""

    def __init__(self, root: Path, identity: dict[str, Any], parts: list[Part], generation: int, *,
                 created: bool) -> None:
        self.root = root
        self.identity = identity
        self.parts = parts
        self.generation = generation  # the generation this invocation writes
        self.created = created  # this invocation made the folder (nothing to resume was there)
        self._sequence = 0

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, out: str | os.PathLike, identity: dict[str, Any], *, columns: Sequence[str], fmt: str | None = None,
             resume: bool = False, overwrite: bool = False) -> "PartStore":
        """Open (resume) or create the state of ``out``.

        Args:
            out: the final output file.
            identity: JSON-able description of what the run produces; a resume must match it.
            columns: the output columns (to validate an existing output that is imported).
            fmt: "csv" or "jsonl" (None: from ``out``'s name).
            resume: continue an unfinished run, or import an existing output and add to it.
            overwrite: discard any state and existing output.

        Raises:
            EdgeregError: an unfinished run or an existing output without ``resume``/``overwrite``;
                a resume with another identity; a manifest that cannot be read.
        """
        out = Path(out)
        fmt = fmt or output_format(out)
        root = state_dir_for(out)
        manifest = root / MANIFEST
        if overwrite:
            _remove_state(root)
        if manifest.exists():
            if not resume:
                raise EdgeregError(f"'{out}' has an unfinished --engine ray run (state in '{root}'); pass --resume "
                                   "to finish it or --overwrite to start over")
            header, parts = _read_manifest(manifest)
            _check_identity(out, header.get("identity"), identity)
            _remove_orphans(root, parts)
            generation = 1 + max((p.generation for p in parts), default=0)
            return cls(root, identity, parts, generation, created=False)
        _remove_state(root)  # a folder without a manifest: half made or half removed
        existing = out.exists() and out.stat().st_size > 0
        if existing and not (resume or overwrite):
            raise EdgeregError(f"'{out}' already exists; pass --resume to continue it, --overwrite to replace it, "
                               "or choose another --out")
        root.mkdir(parents=True)
        store = cls(root, identity, [], 1, created=True)
        if existing and resume:
            store._import(out, columns, fmt)
        store._write_header()
        return store

    def _write_header(self) -> None:
        manifest = self.root / MANIFEST
        temporary = self.root / f".{MANIFEST}.tmp"
        with open(temporary, "wb") as handle:
            handle.write(_encode({"edgereg_parts": FORMAT_VERSION, "identity": self.identity}))
            for part in self.parts:
                handle.write(_encode(part.__dict__))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, manifest)
        _fsync_dir(self.root)

    def _import(self, out: Path, columns: Sequence[str], fmt: str) -> None:
        """Copy an existing output's rows into generation 0 (before the manifest exists)."""
        load_done_keys(out, columns, fmt=fmt)  # validates the columns, cuts a partial last line
        records = [row_record(row) for row in _read_rows(out, fmt)]
        self.parts.append(self._write_part("g0000-000000.jsonl", records, generation=0, errors=0))

    # ------------------------------------------------------------------ writing

    def commit(self, records: Sequence[bytes], *, errors: int) -> Part:
        """Commit one part of this generation: ``records`` from :func:`row_record` / :func:`error_record`."""
        self._sequence += 1
        name = f"g{self.generation:04d}-{self._sequence:06d}.jsonl"
        part = self._write_part(name, records, generation=self.generation, errors=errors)
        with open(self.root / MANIFEST, "ab", buffering=0) as handle:
            handle.write(_encode(part.__dict__))
            os.fsync(handle.fileno())
        self.parts.append(part)
        return part

    def _write_part(self, name: str, records: Sequence[bytes], *, generation: int, errors: int) -> Part:
        temporary = self.root / f".{name}.tmp"
        with open(temporary, "wb") as handle:
            handle.write(b"".join(records))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.root / name)
        _fsync_dir(self.root)
        return Part(name, generation, len(records) - errors, errors)

    # ------------------------------------------------------------------ reading

    def _records(self, part: Part) -> Iterator[dict[str, Any]]:
        with open(self.root / part.name, "rb") as handle:
            for line in handle:
                yield json.loads(line.decode("ascii"))  # records are ASCII (escaped) JSON

    def done_keys(self) -> set[str]:
        """The keys of every committed row (what a resume skips)."""
        return {record["row"]["path"] for part in self.parts for record in self._records(part) if "row" in record}

    @property
    def rows(self) -> int:
        return sum(part.rows for part in self.parts)

    # ------------------------------------------------------------------ merging

    def merge(self, out: str | os.PathLike, *, columns: Sequence[str], fmt: str | None = None,
              position_of: Mapping[str, int] | None = None) -> tuple[int, int]:
        """Write the output and its errors file from the committed parts (idempotent).

        Rows are ordered by their keys' current positions: each generation was committed in input
        order, so a streaming merge of the generations gives the whole order without holding the
        rows in memory; should a generation not follow today's positions (a list file reordered
        between runs), the rows are sorted in memory instead (stable; keys no longer listed first).

        Args:
            out: the final output file.
            columns: the output columns.
            fmt: "csv" or "jsonl" (None: from ``out``'s name).
            position_of: ``{key: position}`` in the current listing; None keeps commit order
                (``--unordered``).

        Returns:
            (rows written, errors written).
        """
        out = Path(out)
        fmt = fmt or output_format(out)
        temporary = out.with_name(out.name + MERGING_SUFFIX)
        errors: list[dict[str, Any]] = []  # the latest generation's, collected while the rows stream
        try:
            written = self._write_rows(temporary, columns, fmt, self._rows_in_order(position_of, errors))
        except _Unordered:
            errors.clear()
            everything = [(_position(row, position_of), row) for row in self._rows(self.parts, errors)]
            everything.sort(key=lambda item: item[0])  # stable: ties keep commit order
            written = self._write_rows(temporary, columns, fmt, (row for _, row in everything))
        if position_of is not None:
            errors.sort(key=lambda error: _position(error, position_of))
        errors_out = errors_path_for(out)
        errors_temporary = errors_out.with_name(errors_out.name + MERGING_SUFFIX)
        with CsvRowWriter(errors_temporary, ERROR_COLUMNS, fsync_every=NEVER) as writer:
            writer.write_many(errors)
        os.replace(temporary, out)
        os.replace(errors_temporary, errors_out)
        _fsync_dir(out.parent)
        return written, len(errors)

    @staticmethod
    def _write_rows(path: Path, columns: Sequence[str], fmt: str, rows: Iterable[dict[str, Any]]) -> int:
        with open_rows(path, columns, fmt=fmt, overwrite=True, fsync_every=NEVER) as writer:
            writer.write_many({column: row[column] for column in columns} for row in rows)
            return writer.rows_written

    def _rows(self, parts: Sequence[Part], errors: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """The rows of ``parts`` in commit order; their errors of this generation go to ``errors``."""
        for part in parts:
            for record in self._records(part):
                if "row" in record:
                    yield record["row"]
                elif part.generation == self.generation:
                    errors.append(record["error"])

    def _rows_in_order(self, position_of: Mapping[str, int] | None,
                       errors: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """All rows by position (merging the generations), or in commit order without positions.

        Raises:
            _Unordered: a generation's rows are not in position order.
        """
        if position_of is None:
            yield from self._rows(self.parts, errors)
            return
        generations = sorted({part.generation for part in self.parts})
        streams = [_checked(self._rows([p for p in self.parts if p.generation == g], errors), position_of)
                   for g in generations]
        for _, row in heapq.merge(*streams, key=lambda item: item[0]):  # stable across streams
            yield row

    @property
    def committed_now(self) -> int:
        """Parts this invocation committed."""
        return sum(1 for part in self.parts if part.generation == self.generation)

    def discard_if_new(self) -> None:
        """Remove the folder if this invocation made it and committed nothing (an early error)."""
        if self.created and not self.committed_now:
            self.remove()

    def remove(self) -> None:
        """Delete the state (the manifest first, so a crash half-way leaves no resumable state)."""
        _remove_state(self.root)


class _Unordered(Exception):
    """A generation's rows are not in the current listing's order."""


def _position(payload: Mapping[str, Any], position_of: Mapping[str, int]) -> int:
    """The current position of a row's or error's key; -1 for a key no longer listed."""
    return position_of.get(payload["path"], -1)


def _checked(rows: Iterable[dict[str, Any]], position_of: Mapping[str, int]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(position, row)``, raising _Unordered at a position smaller than the one before."""
    last = -1
    for row in rows:
        position = _position(row, position_of)
        if position < last:
            raise _Unordered
        last = position
        yield position, row


def _read_rows(out: Path, fmt: str) -> Iterator[dict[str, Any]]:
    """The rows of an existing output, values as written (CSV: strings, which re-encode byte for byte)."""
    import csv
    import io

    text = out.read_bytes().decode("utf-8", "surrogateescape")
    if fmt == "csv":
        yield from csv.DictReader(io.StringIO(text, newline=""))
    else:
        for line in text.splitlines():
            yield json.loads(line)


def _read_manifest(manifest: Path) -> tuple[dict[str, Any], list[Part]]:
    cut_partial_line(manifest)
    lines = manifest.read_bytes().splitlines()
    fix = f"move '{manifest.parent}' away (or pass --overwrite) and score again"
    try:
        header = json.loads(lines[0]) if lines else {}
        parts = [Part(**json.loads(line)) for line in lines[1:]]
    except (ValueError, TypeError):
        raise EdgeregError(f"'{manifest}' is damaged; {fix}") from None
    if header.get("edgereg_parts") != FORMAT_VERSION:
        raise EdgeregError(f"'{manifest}' is not an edgereg manifest of version {FORMAT_VERSION}; {fix}")
    missing = [part.name for part in parts if not (manifest.parent / part.name).is_file()]
    if missing:
        raise EdgeregError(f"'{manifest}' lists parts that are missing ({', '.join(missing[:3])}); {fix}")
    return header, parts


def _check_identity(out: Path, stored: dict[str, Any] | None, identity: dict[str, Any]) -> None:
    stored = stored or {}
    differ = [name for name in sorted(set(stored) | set(identity)) if stored.get(name) != identity.get(name)]
    if differ:
        what = "; ".join(f"{name} {stored.get(name)!r} then, {identity.get(name)!r} now" for name in differ[:3])
        raise EdgeregError(f"cannot resume '{out}': the unfinished run differs ({what}); use the same model, "
                           "--tta, --shard and order as the first run, --overwrite, or another --out")


def _remove_orphans(root: Path, parts: list[Part]) -> None:
    """Delete temporary files and parts that were renamed but never entered in the manifest."""
    keep = {MANIFEST} | {part.name for part in parts}
    for path in root.iterdir():
        if path.name not in keep and path.is_file():
            path.unlink()


def _remove_state(root: Path) -> None:
    if not root.exists():
        return
    manifest = root / MANIFEST
    if manifest.exists():
        manifest.unlink()
        _fsync_dir(root)
    shutil.rmtree(root)
