"""Exactly-once output of a distributed run: parts committed atomically, a manifest, an idempotent merge.

While an ``--engine ray`` run writes ``preds.csv``, its state lives in ``preds.csv.parts/``:

* ``manifest.jsonl``: a header line ``{"edgereg_parts": 1, "identity": {...}}`` (what the run
  produces: model, card, columns, format, TTA, shard, order), then one line per committed part:
  ``{"name": "g0001-000003.part", "generation": 1, "rows": 4096, "errors": 2}``.
* part files: a first line of ASCII JSON, the index ``{"keys": [...], "ends": [...],
  "error_keys": [...], "error_ends": [...]}`` (each row's key and the byte offset where it ends),
  then the rows exactly as they will stand in the output (encoded once, by
  ``edgereg.batch.encoding.encode_row``, as the local engine encodes them), then the errors file's lines.

Committing a part: write ``.NAME.tmp``, fsync, rename to ``NAME``, fsync the folder, then append
its manifest line (written whole: short writes are completed, a failed write is cut back; then
fsync). The manifest line is the commit: a part file without one (a
crash between the rename and the append) is an orphan, deleted on resume, and its rows are scored
again. So every row is either in exactly one committed part or in none.

A *generation* is one invocation. Resuming (``--resume``) reads the manifest (cutting a partial
last line), skips the keys already in committed rows and scores the rest as the next generation;
inputs that failed before are tried again, as the local engine does. An existing output without
a state folder (a local-engine run, or a finished run) is imported as generation 0 and its keys
skipped likewise.

The merge writes the output from the committed parts alone to ``preds.csv.merging``, fsyncs and
renames it over ``preds.csv``; the errors file likewise, from the latest generation (the local
engine rewrites it on every run for the same reason: earlier failures were retried). Rows are
ordered by their keys' current positions: each generation was committed in input order, so the
rows of one generation are copied part after part as they are, and several generations (after a
resume) are merged row by row; should a generation not follow today's positions (a list file
reordered between runs), a stable sort is used instead (rows of keys no longer listed first).
With ``--unordered`` rows stay in commit order. Merging again gives the same bytes; the state
folder is removed after the merge (manifest first), so a crash at any point leaves either the
state, from which ``--resume`` merges again, or the finished output.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgereg.batch.encoding import ERROR_COLUMNS, encode_csv_row, encode_row, errors_path_for, output_format
from edgereg.batch.resume import cut_partial_line, load_done_keys
from edgereg.batch.writers import discard_output
from edgereg.errors import EdgeregError, output_error
from edgereg.files import atomic_replace, fsync_folder

FORMAT_VERSION = 1
MANIFEST = "manifest.jsonl"
STATE_SUFFIX = ".parts"
MERGING_SUFFIX = ".merging"


def state_dir_for(out: str | os.PathLike) -> Path:
    """``preds.csv`` -> ``preds.csv.parts`` (next to the output)."""
    out = Path(out)
    return out.with_name(out.name + STATE_SUFFIX)


def _json_line(record: Mapping[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=True) + "\n").encode("ascii")


def error_line(key: str, reason: str) -> bytes:
    """A line of the errors file (columns ``path, reason``)."""
    return encode_csv_row([key, reason])


@dataclass(frozen=True)
class Part:
    """One committed part (a manifest line)."""

    name: str
    generation: int
    rows: int
    errors: int


@dataclass
class PartData:
    """A part read back: the index and the bytes of its rows and errors."""

    keys: list[str]
    ends: list[int]  # byte offset in ``rows`` where each row ends
    rows: bytes
    error_keys: list[str]
    error_ends: list[int]
    errors: bytes

    def row_slices(self) -> Iterator[bytes]:
        start = 0
        for end in self.ends:
            yield self.rows[start:end]
            start = end

    def error_slices(self) -> Iterator[bytes]:
        start = 0
        for end in self.error_ends:
            yield self.errors[start:end]
            start = end


class PartStore:
    """The state folder of one output (see the module docstring). Create with :meth:`open`."""

    def __init__(self, root: Path, identity: dict[str, Any], parts: list[Part], generation: int, *,
                 fmt: str, created: bool) -> None:
        self.root = root
        self.identity = identity
        self.parts = parts
        self.generation = generation  # the generation this invocation writes
        self.fmt = fmt
        self.created = created  # this invocation made the folder (nothing to resume was there)
        self._sequence = 0

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, out: str | os.PathLike, identity: dict[str, Any], *, columns: Sequence[str], fmt: str | None = None,
             resume: bool = False, overwrite: bool = False) -> PartStore:
        """Open (resume) or create the state of ``out``.

        Args:
            out: the final output file.
            identity: JSON-able description of what the run produces; a resume must match it.
            columns: the output columns (to validate an existing output that is imported).
            fmt: "csv" or "jsonl" (None: from ``out``'s name).
            resume: continue an unfinished run, or import an existing output and add to it.
            overwrite: discard any state and the existing output, its errors file and identity record.

        Raises:
            EdgeregError: an unfinished run or an existing output without ``resume``/``overwrite``;
                a resume with another identity; a manifest that cannot be read.
        """
        out = Path(out)
        fmt = fmt or output_format(out)
        root = state_dir_for(out)
        manifest = root / MANIFEST
        if overwrite:  # before the new identity is written: no old row survives a failed run
            _remove_state(root)
            discard_output(out)
        if manifest.exists():
            if not resume:
                raise EdgeregError(f"'{out}' has an unfinished --engine ray run (state in '{root}'); pass --resume "
                                   "to finish it or --overwrite to start over")
            header, parts = _read_manifest(manifest)
            _check_identity(out, header.get("identity"), identity)
            _remove_orphans(root, parts)
            generation = 1 + max((p.generation for p in parts), default=0)
            return cls(root, identity, parts, generation, fmt=fmt, created=False)
        _remove_state(root)  # a folder without a manifest: half made or half removed
        existing = out.exists() and out.stat().st_size > 0
        if existing and not (resume or overwrite):
            raise EdgeregError(f"'{out}' already exists; pass --resume to continue it, --overwrite to replace it, "
                               "or choose another --out")
        root.mkdir(parents=True)
        store = cls(root, identity, [], 1, fmt=fmt, created=True)
        if existing and resume:
            store._import(out, columns)
        store._write_manifest()
        return store

    def _write_manifest(self) -> None:
        lines = [_json_line({"edgereg_parts": FORMAT_VERSION, "identity": self.identity}),
                 *(_json_line(asdict(part)) for part in self.parts)]
        atomic_replace(self.root / MANIFEST, lines, temp_name=f".{MANIFEST}.tmp", sync_folder=True)

    def _import(self, out: Path, columns: Sequence[str]) -> None:
        """Copy an existing output's rows into generation 0 (before the manifest exists).

        Rows are re-encoded from the values as written (CSV: strings), which gives their bytes back.
        """
        load_done_keys(out, columns, fmt=self.fmt)  # validates the columns, cuts a partial last line
        rows = [(row["path"], encode_row(row, self.fmt)) for row in _read_rows(out, self.fmt)]
        self.parts.append(self._write_part("g0000-000000.part", rows, [], generation=0))

    # ------------------------------------------------------------------ writing

    def commit(self, rows: Sequence[tuple[str, bytes]], errors: Sequence[tuple[str, bytes]] = ()) -> Part:
        """Commit one part of this generation.

        Args:
            rows: ``(key, output line)`` in input order (lines from ``edgereg.batch.encoding.encode_row``).
            errors: ``(key, errors-file line)`` (lines from :func:`error_line`).
        """
        self._sequence += 1
        name = f"g{self.generation:04d}-{self._sequence:06d}.part"
        try:
            part = self._write_part(name, rows, errors, generation=self.generation)
        except OSError as exc:  # the part is an orphan, removed on resume
            raise output_error(exc, self.root / name, mid_run=True, resumable=True) from None
        _append_line(self.root / MANIFEST, _json_line(asdict(part)))
        self.parts.append(part)
        return part

    def _write_part(self, name: str, rows: Sequence[tuple[str, bytes]], errors: Sequence[tuple[str, bytes]], *,
                    generation: int) -> Part:
        index = {"keys": [key for key, _ in rows], "ends": _ends(line for _, line in rows),
                 "error_keys": [key for key, _ in errors], "error_ends": _ends(line for _, line in errors)}
        atomic_replace(self.root / name, (_json_line(index), b"".join(line for _, line in rows),
                                          b"".join(line for _, line in errors)),
                       temp_name=f".{name}.tmp", sync_folder=True)
        return Part(name, generation, len(rows), len(errors))

    # ------------------------------------------------------------------ reading

    def read(self, part: Part) -> PartData:
        with open(self.root / part.name, "rb") as handle:
            index = json.loads(handle.readline().decode("ascii"))
            data = handle.read()
        split = index["ends"][-1] if index["ends"] else 0
        return PartData(index["keys"], index["ends"], data[:split], index["error_keys"], index["error_ends"],
                        data[split:])

    def done_keys(self) -> set[str]:
        """The keys of every committed row (what a resume skips)."""
        done: set[str] = set()
        for part in self.parts:
            with open(self.root / part.name, "rb") as handle:
                done.update(json.loads(handle.readline().decode("ascii"))["keys"])
        return done

    @property
    def rows(self) -> int:
        return sum(part.rows for part in self.parts)

    @property
    def committed_now(self) -> int:
        """Parts this invocation committed."""
        return sum(1 for part in self.parts if part.generation == self.generation)

    # ------------------------------------------------------------------ merging

    def merge(self, out: str | os.PathLike, *, columns: Sequence[str],
              position_of: Mapping[str, int] | None = None) -> tuple[int, int]:
        """Write the output and its errors file from the committed parts (idempotent).

        Args:
            out: the final output file.
            columns: the output columns (the CSV header).
            position_of: ``{key: position}`` in the current listing; None keeps commit order
                (``--unordered``).

        Returns:
            (rows written, errors written).
        """
        out = Path(out)
        header = encode_csv_row(columns) if self.fmt == "csv" else b""
        atomic_replace(out, itertools.chain((header,), self._ordered_rows(position_of)),
                       temp_name=out.name + MERGING_SUFFIX)
        errors: list[tuple[int, bytes]] = []
        for part in self.parts:
            if part.generation == self.generation:
                data = self.read(part)
                errors += [(_position(key, position_of), line)
                           for key, line in zip(data.error_keys, data.error_slices())]
        if position_of is not None:
            errors.sort(key=lambda item: item[0])  # stable
        errors_path = errors_path_for(out)
        atomic_replace(errors_path, (encode_csv_row(ERROR_COLUMNS), *(line for _, line in errors)),
                       temp_name=errors_path.name + MERGING_SUFFIX, sync_folder=True)
        return self.rows, len(errors)

    def _ordered_rows(self, position_of: Mapping[str, int] | None) -> Iterator[bytes]:
        """The rows' bytes in the output's order (see the module docstring)."""
        generations = sorted({part.generation for part in self.parts})
        by_generation = [[part for part in self.parts if part.generation == g] for g in generations]
        if position_of is None:
            for part in self.parts:
                yield self.read(part).rows
            return
        if not all(self._in_order(parts, position_of) for parts in by_generation):
            everything = [(_position(key, position_of), line) for part in self.parts
                          for key, line in zip(*self._keys_and_lines(part))]
            everything.sort(key=lambda item: item[0])  # stable: ties keep commit order
            yield from (line for _, line in everything)
            return
        if len(by_generation) == 1:  # one run from start to end: its parts are already in order
            for part in by_generation[0]:
                yield self.read(part).rows
            return
        streams = [self._positioned(parts, position_of) for parts in by_generation]
        for _, line in heapq.merge(*streams, key=lambda item: item[0]):  # stable across streams
            yield line

    def _keys_and_lines(self, part: Part) -> tuple[list[str], Iterator[bytes]]:
        data = self.read(part)
        return data.keys, data.row_slices()

    def _positioned(self, parts: Sequence[Part], position_of: Mapping[str, int]) -> Iterator[tuple[int, bytes]]:
        for part in parts:
            keys, lines = self._keys_and_lines(part)
            for key, line in zip(keys, lines):
                yield _position(key, position_of), line

    def _in_order(self, parts: Sequence[Part], position_of: Mapping[str, int]) -> bool:
        """Whether these parts' rows come in non-decreasing current positions (reads the indexes only)."""
        last = -1
        for part in parts:
            with open(self.root / part.name, "rb") as handle:
                keys = json.loads(handle.readline().decode("ascii"))["keys"]
            for key in keys:
                position = _position(key, position_of)
                if position < last:
                    return False
                last = position
        return True

    def discard_if_new(self) -> None:
        """Remove the folder if this invocation made it and committed nothing (an early error)."""
        if self.created and not self.committed_now:
            self.remove()

    def remove(self) -> None:
        """Delete the state (the manifest first, so a crash half-way leaves no resumable state)."""
        _remove_state(self.root)


def _ends(lines) -> list[int]:
    """Cumulative byte offsets where each line ends."""
    ends, total = [], 0
    for line in lines:
        total += len(line)
        ends.append(total)
    return ends


def _position(key: str, position_of: Mapping[str, int] | None) -> int:
    """The current position of a key; -1 for a key no longer listed (or without positions)."""
    return position_of.get(key, -1) if position_of is not None else -1


def _append_line(path: Path, line: bytes) -> None:
    """Append one whole line to ``path`` and fsync it.

    A write may take fewer bytes than given (a full disk, a signal): the rest is written until the
    line is whole, so a later line never follows half of one. On an error the file is cut back to
    where it ended, so it still ends with a whole line.

    Raises:
        WriteFailedError: the line could not be written (disk full, I/O error); ``--resume`` goes on.
    """
    with open(path, "ab", buffering=0) as handle:
        end = handle.seek(0, os.SEEK_END)
        view = memoryview(line)
        try:
            while view:
                written = handle.write(view)
                if not written:  # nothing taken and no error: the device takes no more
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view = view[written:]
            os.fsync(handle.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(handle.fileno(), end)
            raise output_error(exc, path, mid_run=True, resumable=True) from None


def _read_rows(out: Path, fmt: str) -> Iterator[dict[str, Any]]:
    """The rows of an existing output, values as written (CSV: strings, which re-encode byte for byte)."""
    import csv
    import io

    text = out.read_bytes().decode("utf-8", "surrogateescape")
    if fmt == "csv":
        yield from csv.DictReader(io.StringIO(text, newline=""))
    else:
        for line in text.split("\n")[:-1]:  # not splitlines: U+2028, U+0085 may stand raw in a path
            yield json.loads(line)


def _read_manifest(manifest: Path) -> tuple[dict[str, Any], list[Part]]:
    cut_partial_line(manifest)
    lines = manifest.read_bytes().split(b"\n")[:-1]  # ends with a newline (cut_partial_line)
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
                           "--card, --tta, --shard and order as the first run, --overwrite, or another --out")


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
        fsync_folder(root)
    shutil.rmtree(root)
