"""Output rows as bytes: a CSV line or a JSON line, exactly as every engine writes them.

* CSV: numbers with 7 significant digits (the models are float32); ``None`` (a withheld reading)
  is an empty cell; the ``flags`` column joins flags with ``;``; an infinite bound is ``inf``.
* JSONL: one JSON object per line with the same keys; ``flags`` is a list; non-finite numbers are
  ``null`` (``edgereg.json_values``).

Text is UTF-8 with ``surrogateescape``, so paths that are not UTF-8 round-trip byte for byte. The
columns of a row are ``edgereg.core.rows``; the writers that append these lines durably are
``edgereg.batch.writers``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgereg.errors import EdgeregError
from edgereg.json_values import finite_or_none

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


def _format_number(value: Any) -> str:
    if value is None:  # a withheld reading: an empty cell
        return ""
    if isinstance(value, float):
        return format(value, ".7g")
    return str(value)


def encode_csv_row(values: Sequence[Any]) -> bytes:
    """One CSV line (quoted as needed, ``\\n``-terminated) as bytes."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([_format_number(v) for v in values])
    return buffer.getvalue().encode(ENCODING, ENCODING_ERRORS)


def encode_jsonl_row(row: dict[str, Any]) -> bytes:
    """One JSON object on one line (newlines in strings are escaped) as bytes."""
    clean = {key: finite_or_none(value) if isinstance(value, float) else value for key, value in row.items()}
    return (json.dumps(clean, ensure_ascii=False) + "\n").encode(ENCODING, ENCODING_ERRORS)


def encode_row(row: dict[str, Any], fmt: str) -> bytes:
    """An output row as the row writers write it: a CSV line (``flags`` joined with ``;``) or a JSON
    line (``flags`` a list). For code that writes whole blocks of rows (``edgereg.cluster``)."""
    if fmt == "csv":
        return encode_csv_row([FLAG_SEPARATOR.join(v) if isinstance(v, (list, tuple)) else v for v in row.values()])
    return encode_jsonl_row({k: list(v) if isinstance(v, tuple) else v for k, v in row.items()})


__all__ = ["ENCODING", "ENCODING_ERRORS", "ERROR_COLUMNS", "FLAG_SEPARATOR", "encode_csv_row", "encode_jsonl_row",
           "encode_row", "errors_path_for", "output_format"]
