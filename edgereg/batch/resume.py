"""Resuming an output: which rows it already holds, and whose rows they are.

* :func:`load_done_keys`: the ``path`` of every row already written (after cutting a partial last
  line, :func:`cut_partial_line`), so ``--resume`` skips them; it refuses other columns.
* Identity: ``<out>.meta.json`` (e.g. ``preds.csv.meta.json``) records who wrote the rows
  (:class:`OutputIdentity`: the model's SHA-256 and file name, its card's SHA-256, the TTA, the
  columns and the edgereg version). It is written atomically before the first row; ``--resume``
  compares it with the run about to append (:func:`check_resume_identity`) and refuses to mix
  rows of another model, card, TTA or target set. A non-empty output without its sidecar (an
  older edgereg, another tool) is refused as well: nothing says whose rows it holds.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from edgereg.batch.encoding import ENCODING, ENCODING_ERRORS, output_format
from edgereg.errors import EdgeregError
from edgereg.files import atomic_write, sha256_file


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


IDENTITY_FORMAT = 1
IDENTITY_SUFFIX = ".meta.json"
# What must match for rows to belong together; the file name and the version are recorded only.
IDENTITY_KEYS = ("model_sha256", "card_sha256", "tta", "columns", "readings")


def identity_path_for(out: str | os.PathLike) -> Path:
    """``preds.csv`` -> ``preds.csv.meta.json`` (next to the output)."""
    out = Path(out)
    return out.with_name(out.name + IDENTITY_SUFFIX)


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
        return cls(model_sha256=sha256_file(model_path), model_name=Path(model_path).name, tta=str(tta),
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


__all__ = ["IDENTITY_KEYS", "OutputIdentity", "check_resume_identity", "cut_partial_line", "identity_path_for",
           "load_done_keys", "read_identity", "write_identity"]
