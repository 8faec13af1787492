"""Loading a dataset (labels.csv + images) into memory, preprocessed the way the runtime will see it.

``load_dataset`` reads ``labels.csv``, reports bad rows with their file and line, decodes and crops
the images with ``edgereg.preprocess`` in a thread pool (OpenCV releases the GIL), infers the target
kind, and keeps the result in ``ROOT/.edgereg-cache/<fingerprint>.npz`` so the next load of the same
files with the same preprocessing is a single read. numpy and OpenCV only: no torch.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgereg.core.kinds import target_kind
from edgereg.data.kinds import KIND_DATA, SUM_TOLERANCE, coord_pairs, kind_data
from edgereg.errors import DatasetError, DecodeError, ShapeError, did_you_mean
from edgereg.files import atomic_path
from edgereg.preprocess import PreprocessConfig, default_threads, read_frame
from edgereg.preprocess.decode import DEFAULT_MAX_PIXELS

LABELS_FILE = "labels.csv"
CACHE_DIR = ".edgereg-cache"
_CACHE_FORMAT = 1  # bump when the cached arrays change meaning
_ANGLE_NAMES = ("angle", "orientation", "heading")
_ANGLE_SUFFIXES = ("_deg", "_angle", "_orientation")
_CONSTANT_SPAN = 1e-6  # a target whose spread is below this fraction of its magnitude is constant
SKIPS_SHOWN = 3  # skipped rows quoted in a skip summary


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset in memory, ready for training and evaluation.

    Attributes:
        images: (N, H, W, 3) uint8, BGR, decoded, cropped and resized by ``edgereg.preprocess.read_frame``
            to ``config.input_size``.
        targets: (N, T) float64 in the csv's units, except coords: [0, 1] of the model input
            (``u = (x - x0 + 0.5) / w``), and angles wrapped to [0, 360).
        names: the T target names, in column order (coords reordered to x, y per point).
        kind: a name in ``edgereg.data.kinds.KIND_DATA`` (scalar, vector, distribution,
            coords, angle, count).
        kind_reason: why this kind (inferred, or "given").
        groups: (N,) object array of str (the csv's ``group`` column), or None.
        paths: N image paths as written in labels.csv (relative to ``root``, or absolute).
        crop_boxes: (N, 4) float64 ``(x0, y0, w, h)`` of each crop in source pixels.
        fingerprint: sha256 hex of labels.csv, each listed file's size and mtime, the targets and
            kind asked for, and the preprocessing fields that shape the images (input_size, crop,
            roi; normalization happens later and does not enter).
        skipped: ``(line, path, reason)`` of each row left out, by line.
        root: the folder of labels.csv.
        config: the preprocessing the images went through.
        from_cache: whether the arrays were read from the disk cache.
    """

    images: np.ndarray  # (N, H, W, 3) uint8 BGR, the model input before normalization
    targets: np.ndarray  # (N, T) float64
    names: tuple[str, ...]  # target names, T of them
    kind: str  # how the head, loss and metrics treat the targets
    kind_reason: str  # shown to the user next to the kind
    groups: np.ndarray | None  # (N,) str labels for group-aware splits
    paths: tuple[str, ...]  # as in labels.csv, relative to root
    crop_boxes: np.ndarray  # (N, 4) float64 source-pixel crops, to map coords back
    fingerprint: str  # identifies files + preprocessing; keys the cache and the run provenance
    skipped: tuple[tuple[int, str, str], ...]  # (line, path, reason)
    root: Path  # folder of labels.csv
    config: PreprocessConfig  # preprocessing applied to images
    from_cache: bool = False  # read from ROOT/.edgereg-cache

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def image_paths(self) -> list[Path]:
        """The N image files, joined to ``root``."""
        return [self.root / p for p in self.paths]

    def source_targets(self) -> np.ndarray:
        """(N, T) float64 targets in the csv's own units (coords back in source pixels)."""
        if not target_kind(self.kind).xy_points:
            return self.targets.copy()
        x0, y0, w, h = (self.crop_boxes[:, i:i + 1] for i in range(4))  # 4 x (N, 1)
        out = self.targets.copy()
        out[:, 0::2] = x0 + out[:, 0::2] * w - 0.5
        out[:, 1::2] = y0 + out[:, 1::2] * h - 0.5
        return out

    def subset(self, indices) -> Dataset:
        """The rows ``indices`` (e.g. ``split.train``) as a Dataset with the same fingerprint."""
        index = np.asarray(indices, dtype=np.int64).reshape(-1)  # any sequence -> (n,)
        return dataclasses.replace(
            self, images=self.images[index], targets=self.targets[index],
            groups=None if self.groups is None else self.groups[index],
            paths=tuple(self.paths[i] for i in index), crop_boxes=self.crop_boxes[index])


def infer_kind(names: Sequence[str], targets: np.ndarray) -> tuple[str, str]:
    """Guess the target kind from the column names and values.

    Rules, in order: two or more non-negative columns whose every row sums to 1 -> distribution;
    names ``x, y`` or pairs ``*_x, *_y`` -> coords; one column named like ``angle``, ``*_deg`` or
    ``orientation`` -> angle; one column -> scalar; otherwise vector.

    Args:
        names: the T target names.
        targets: (N, T) float values.

    Returns:
        (kind, reason): reason is one line for the user.
    """
    values = np.asarray(targets, dtype=np.float64).reshape(len(targets), len(names))  # (N, T)
    if len(names) >= 2 and values.size and values.min() >= 0:
        deviation = float(np.abs(values.sum(axis=1) - 1.0).max())
        if deviation <= SUM_TOLERANCE:
            return "distribution", (f"the {len(names)} columns are non-negative and every row sums to 1 "
                                    f"(largest deviation {deviation:.1e})")
    by_name = kind_by_names(names)
    if by_name == "coords":
        return "coords", f"columns {', '.join(names)} are (x, y) pixel coordinates"
    if by_name == "angle":
        return "angle", f"the single column {names[0]!r} is named like an angle in degrees"
    if len(names) == 1:
        return "scalar", f"a single numeric column {names[0]!r}"
    return "vector", f"{len(names)} independent numeric columns"


def kind_by_names(names: Sequence[str]) -> str | None:
    """The kind the target column names decide on their own, the rules :func:`infer_kind` applies
    after its distribution test: ``"coords"`` when every name is half of an ``x, y`` or ``P_x, P_y``
    pair (``X, Y`` too; the case of each pair must match), ``"angle"`` for one column named like an
    angle (``angle``, ``orientation``, ``heading``, ``*_deg``, ...), else None.

    Args:
        names: the target column names (labels.csv's header without ``path`` and ``group``, or
            the ``--targets`` chosen).
    """
    if coord_pairs(names) is not None:
        return "coords"
    if len(names) == 1 and _looks_like_angle(names[0]):
        return "angle"
    return None


def target_columns(header: Sequence[str]) -> list[str]:
    """The target columns of a labels.csv header when none are chosen: every column but ``path``
    and ``group``, in order."""
    return [name for name in header if name not in ("path", "group")]


def default_range(values) -> tuple[float, float]:
    """The data range widened by 5 % of its span on each side (or +-5 % of the value if constant).

    Args:
        values: (N,) float, one target's values.

    Returns:
        (lo, hi) floats.
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ShapeError(f"expected one target's values (N,), got shape {array.shape}; pass one column")
    if array.size == 0 or not np.isfinite(array).all():
        raise DatasetError(f"cannot take a range of {array.size} value(s) with non-finite entries; "
                           f"expected finite numbers")
    lo, hi = float(array.min()), float(array.max())
    margin = 0.05 * (hi - lo) if hi > lo else 0.05 * max(abs(lo), 1.0)
    return lo - margin, hi + margin


def _looks_like_angle(name: str) -> bool:
    lower = name.lower()
    return lower in _ANGLE_NAMES or lower.endswith(_ANGLE_SUFFIXES)


@dataclass(frozen=True)
class _Row:
    """One usable row of labels.csv before its image is read."""

    line: int  # 1-based line in labels.csv
    path: str  # as written
    values: tuple[float, ...]  # selected targets, in order
    group: str | None


def _dataset_csv(root_or_csv: str | os.PathLike) -> Path:
    path = Path(root_or_csv)
    if path.is_dir():
        path = path / LABELS_FILE
        if not path.is_file():
            raise DatasetError(f"'{path.parent}' has no {LABELS_FILE}; expected a folder with {LABELS_FILE} "
                               f"(header 'path,<target>,...') or the path of a .csv file")
        return path
    if not path.is_file():
        raise DatasetError(f"dataset not found: '{path}'; expected a folder with {LABELS_FILE} or a .csv file")
    return path


def read_labels(csv_path: Path, data: bytes) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """labels.csv's header (each name stripped) and its rows as ``(line, cells)``, blank lines included.

    Args:
        csv_path: the file, for the messages.
        data: its bytes (UTF-8, a BOM allowed).

    Raises:
        DatasetError: not UTF-8, empty, or unreadable CSV (with the line).
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"'{csv_path}' is not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise DatasetError(f"'{csv_path}' is empty; expected a header 'path,<target>,...' and one row "
                           f"per image") from None
    except csv.Error as exc:
        raise DatasetError(f"'{csv_path}' line 1: unreadable CSV ({exc})") from None
    rows = []
    try:
        for cells in reader:
            rows.append((reader.line_num, cells))
    except csv.Error as exc:
        raise DatasetError(f"'{csv_path}' line {reader.line_num}: unreadable CSV ({exc}); fix the quoting") from None
    return [cell.strip() for cell in header], rows


def _select_targets(csv_path: Path, header: list[str], targets: Sequence[str] | str | None) -> list[str]:
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise DatasetError(f"'{csv_path}' header repeats column(s) {', '.join(duplicates)}; give each "
                           f"column a unique name")
    if "path" not in header:
        raise DatasetError(f"'{csv_path}' has no 'path' column; expected a header like "
                           f"'path,<target>,...', got '{','.join(header)}'")
    available = target_columns(header)
    if "" in available:
        raise DatasetError(f"'{csv_path}' header has an empty column name (column "
                           f"{header.index('') + 1}); name every column")
    if not available:
        raise DatasetError(f"'{csv_path}' has no target columns; expected a header like "
                           f"'path,<target>[,<target>...][,group]'")
    if targets is None:
        return available
    wanted = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else [str(t) for t in targets]
    if not wanted or len(set(wanted)) != len(wanted):
        raise DatasetError(f"targets must name distinct columns, got {wanted}")
    for name in wanted:
        if name not in available:
            raise DatasetError(f"unknown target column {name!r}{did_you_mean(name, available)}; "
                               f"'{csv_path.name}' has: {', '.join(available)}")
    return wanted


def _parse_values(cells: list[str], names: list[str]) -> tuple[tuple[float, ...], str | None]:
    """The target cells of one row as floats, or the first problem with them."""
    values = []
    for name, cell in zip(names, cells):
        cell = cell.strip()
        if not cell:
            return (), f"missing target {name!r}"
        try:
            value = float(cell)
        except ValueError:
            return (), f"non-numeric target {name!r}: {cell!r}"
        if not math.isfinite(value):
            return (), f"non-finite target {name!r}: {cell!r}"
        values.append(value)
    return tuple(values), None


def confine(root: Path, path: str, *, allow_outside: bool = False) -> tuple[Path, str | None]:
    """The file a labels.csv ``path`` names (``root / path``, symlinks resolved), and why it may not
    be opened: a path that leaves the dataset folder (``/etc/passwd``, ``../../x.png``, a symlink
    out of it) is refused unless ``allow_outside``.

    Returns:
        (resolved path, None) or (resolved path, reason).
    """
    full = root / path
    try:
        resolved = full.resolve()
        inside = resolved.is_relative_to(root.resolve())
    except (OSError, RuntimeError, ValueError):  # a symlink loop, an unencodable name
        return full, "the path cannot be resolved (a symbolic link loop?)"
    if inside or allow_outside:
        return resolved, None
    return resolved, (f"outside the dataset folder (resolves to '{resolved}'); image paths must stay inside "
                      f"the folder of {LABELS_FILE}: move the image there, or pass --allow-outside")


def _parse_rows(header: list[str], rows: list[tuple[int, list[str]]], names: list[str], root: Path,
                report: Callable[[int, str, str], None], *, allow_outside: bool = False
                ) -> tuple[list[_Row], list[tuple[str, int, int]]]:
    """Turn csv rows into _Rows whose file exists, with each file's (path, size, mtime_ns).

    Every bad row goes to ``report(line, path, reason)``, in line order: a path outside the dataset
    folder (see :func:`confine`), and every repeat of an image already listed (the same file after
    resolving ``./``, ``..`` and symlinks; the first row wins, with a note when the targets or group
    of the repeat differ).
    """
    first_seen: dict[Path, _Row] = {}
    path_col = header.index("path")
    group_col = header.index("group") if "group" in header else None
    target_cols = [header.index(name) for name in names]
    parsed, stats = [], []
    for line, cells in rows:
        if not any(cell.strip() for cell in cells):
            continue  # blank line
        path = cells[path_col].strip() if path_col < len(cells) else ""
        if len(cells) != len(header):
            report(line, path, f"expected {len(header)} fields (header), got {len(cells)}")
            continue
        if not path:
            report(line, path, "empty 'path'")
            continue
        values, problem = _parse_values([cells[col] for col in target_cols], names)
        if problem is None and group_col is not None and not cells[group_col].strip():
            problem = "empty 'group' (give every row a group, or drop the column)"
        if problem is not None:
            report(line, path, problem)
            continue
        resolved, outside = confine(root, path, allow_outside=allow_outside)
        if outside is not None:
            report(line, path, outside)
            continue
        group = cells[group_col].strip() if group_col is not None else None
        earlier = first_seen.get(resolved)
        if earlier is not None:
            conflicts = [what for what, differs in (("targets", earlier.values != values),
                                                    ("group", earlier.group != group)) if differs]
            conflict = f" with other {' and '.join(conflicts)}" if conflicts else ""
            report(line, path, f"duplicate of line {earlier.line} (the same image{conflict}); the first row is "
                               "kept: remove or fix the repeat")
            continue
        try:
            info = (root / path).stat()
        except OSError:
            report(line, path, "file not found")
            continue
        row = _Row(line, path, values, group)
        first_seen[resolved] = row
        parsed.append(row)
        stats.append((path, info.st_size, info.st_mtime_ns))
    return parsed, stats


def _fingerprint(csv_bytes: bytes, stats: list[tuple[str, int, int]], names: list[str], kind: str | None,
                 config: PreprocessConfig) -> str:
    digest = hashlib.sha256()
    digest.update(f"edgereg-dataset-v{_CACHE_FORMAT}\n".encode())
    digest.update(csv_bytes)
    for path, size, mtime_ns in stats:
        digest.update(f"\n{path}\t{size}\t{mtime_ns}".encode())
    # Only the fields that change the loaded arrays: normalization (mean, std, fill) and channels are
    # applied later by the kernel, so a model with other statistics reuses the same cache.
    geometry = {"input_size": list(config.input_size), "crop": config.crop,
                "roi": None if config.roi is None else [float(v) for v in config.roi]}
    if config.decode != "full":  # runs recorded before the decode policy existed keep their fingerprint
        geometry["decode"] = config.decode
    digest.update(json.dumps({"targets": names, "kind": kind, "geometry": geometry}, sort_keys=True).encode())
    return digest.hexdigest()


def _load_image(path: Path, config: PreprocessConfig, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """Decode and crop one image; returns (image, CropBox) or the DecodeError."""
    try:
        return read_frame(path, config, max_pixels=max_pixels)  # the runtime's decode policy (preprocess.frames)
    except DecodeError as exc:
        return exc


def _wrap_reason(exc: DecodeError, path: Path) -> str:
    """A DecodeError's message without the path prefix it repeats."""
    text = str(exc)
    prefix = f"'{path}': "
    return text[len(prefix):] if text.startswith(prefix) else text


def _apply_kind(names: list[str], targets: np.ndarray, boxes: np.ndarray, kind: str | None,
                csv_name: str, lines: list[int]) -> tuple[list[str], np.ndarray, str, str]:
    """Validate or infer the kind and convert targets (coords to [0, 1], angles to [0, 360))."""
    if kind is None:
        kind, reason = infer_kind(names, targets)
    else:
        reason = "given"
        if kind not in KIND_DATA:
            raise DatasetError(f"unknown kind {kind!r}{did_you_mean(kind, tuple(KIND_DATA))}; "
                               f"use one of {', '.join(KIND_DATA)}")
        kind_data(kind).check_targets(names, targets, csv_name, lines)
    names, targets = kind_data(kind).to_training_units(names, targets, boxes)
    return names, targets, kind, reason


def _cache_file(root: Path, fingerprint: str) -> Path:
    return root / CACHE_DIR / f"{fingerprint}.npz"


def _read_cache(path: Path, root: Path, fingerprint: str, config: PreprocessConfig) -> Dataset | None:
    """The cached Dataset, or None when there is none or it cannot be read."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            images = data["images"]
            n = images.shape[0]
            groups = data["groups"].astype(object) if bool(data["has_groups"]) else None
            dataset = Dataset(
                images=images, targets=data["targets"], names=tuple(data["names"].tolist()),
                kind=str(data["kind"]), kind_reason=str(data["kind_reason"]), groups=groups,
                paths=tuple(data["paths"].tolist()), crop_boxes=data["crop_boxes"], fingerprint=fingerprint,
                skipped=tuple((int(a), str(b), str(c)) for a, b, c in json.loads(str(data["skipped"]))),
                root=root, config=config, from_cache=True)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    consistent = (dataset.targets.shape[0] == n and len(dataset.paths) == n and dataset.crop_boxes.shape == (n, 4)
                  and (groups is None or groups.shape == (n,)))
    return dataset if consistent else None


def _write_cache(path: Path, dataset: Dataset) -> None:
    """Write the cache atomically (``edgereg.files.atomic_path``); an unwritable folder just skips it."""
    try:
        path.parent.mkdir(exist_ok=True)
        # saved through an open file: np.savez given a path would add ".npz" to the temporary name
        with atomic_path(path) as temp, open(temp, "wb") as handle:
            np.savez(handle, images=dataset.images, targets=dataset.targets, names=np.array(dataset.names),
                     kind=np.array(dataset.kind), kind_reason=np.array(dataset.kind_reason),
                     has_groups=np.array(dataset.groups is not None),
                     groups=np.array(dataset.groups.tolist() if dataset.groups is not None else [], dtype=str),
                     paths=np.array(dataset.paths, dtype=str), crop_boxes=dataset.crop_boxes,
                     skipped=np.array(json.dumps(dataset.skipped)))
    except OSError:
        pass  # read-only dataset folder, full disk: loading still works, only slower next time


def load_dataset(root_or_csv: str | os.PathLike, *, config: PreprocessConfig,
                 targets: Sequence[str] | str | None = None, kind: str | None = None, strict: bool = False,
                 cache: bool = True, threads: int | None = None, allow_outside: bool = False,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Dataset:
    """Load labels.csv and its images, cropped and resized for the model.

    Bad rows (missing file, missing or non-numeric target, wrong number of fields, empty group, a
    path outside the dataset folder, a repeat of an image already listed, undecodable image) are
    skipped and listed in ``Dataset.skipped`` with their line, or raise on the first one found with
    ``strict=True``: the csv is checked row by row first, images are decoded after.

    Args:
        root_or_csv: a dataset folder holding labels.csv, or the csv itself; image paths in it are
            relative to the csv's folder.
        config: the preprocessing (crop, input size) the model will use.
        targets: the target columns to use (names, or one comma-separated string); default all
            columns but ``path`` and ``group``.
        kind: force a target kind; default: inferred (see ``infer_kind``).
        strict: raise DatasetError on the first bad row instead of skipping it.
        cache: read and write ``ROOT/.edgereg-cache/<fingerprint>.npz``.
        threads: decoder threads (default: one per core, at least 2).
        allow_outside: accept image paths that resolve outside the folder of labels.csv.
        max_pixels: images declaring more pixels are bad rows (``--max-pixels``; None: no limit).

    Returns:
        The Dataset.

    Raises:
        DatasetError: no labels.csv, a bad header, unknown target names, an impossible kind, a bad row
            with ``strict``, or no usable row at all.
    """
    csv_path = _dataset_csv(root_or_csv)
    root = csv_path.parent
    try:
        csv_bytes = csv_path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read '{csv_path}': {exc.strerror or exc}") from None
    header, raw_rows = read_labels(csv_path, csv_bytes)
    names = _select_targets(csv_path, header, targets)
    skipped: list[tuple[int, str, str]] = []

    def report(line: int, path: str, reason: str) -> None:
        if strict:
            raise DatasetError(f"{csv_path.name} line {line}, '{path}': {reason} "
                               f"(fix the row, or load without --strict to skip bad rows)")
        skipped.append((line, path, reason))

    rows, stats = _parse_rows(header, raw_rows, names, root, report, allow_outside=allow_outside)

    fingerprint = _fingerprint(csv_bytes, stats, names, kind, config)
    cache_path = _cache_file(root, fingerprint)
    cached = _read_cache(cache_path, root, fingerprint, config) if cache else None
    if cached is not None:
        if strict and cached.skipped:
            line, path, reason = cached.skipped[0]
            report(line, path, reason)
        return dataclasses.replace(cached, skipped=tuple(sorted(skipped + list(cached.skipped))))

    height, width = config.input_size
    images = np.empty((len(rows), height, width, 3), dtype=np.uint8)
    boxes = np.empty((len(rows), 4), dtype=np.float64)
    keep = np.ones(len(rows), dtype=bool)
    decode_failures = []
    pool = ThreadPoolExecutor(max_workers=threads or default_threads(), thread_name_prefix="edgereg-load")
    try:
        results = pool.map(lambda row: _load_image(root / row.path, config, max_pixels), rows)
        for i, (row, result) in enumerate(zip(rows, results)):
            if isinstance(result, DecodeError):
                keep[i] = False
                reason = _wrap_reason(result, root / row.path)
                decode_failures.append((row.line, row.path, reason))
                report(row.line, row.path, reason)  # raises with strict
                continue
            images[i], box = result
            boxes[i] = box.as_array()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a strict failure stops the remaining decodes
    if not keep.all():
        images, boxes = images[keep], boxes[keep]
        rows = [row for row, ok in zip(rows, keep) if ok]
    if not rows:
        first = f" (first: line {skipped[0][0]} '{skipped[0][1]}': {skipped[0][2]})" if skipped else ""
        raise DatasetError(f"no usable rows in '{csv_path}': {len(skipped)} row(s) skipped{first}; fix the "
                           f"paths (relative to the csv) and targets, then load again")

    values = np.array([row.values for row in rows], dtype=np.float64).reshape(len(rows), len(names))  # (N, T)
    out_names, values, out_kind, reason = _apply_kind(list(names), values, boxes, kind, csv_path.name,
                                                      [row.line for row in rows])
    has_groups = "group" in header
    dataset = Dataset(
        images=images, targets=values, names=tuple(out_names), kind=out_kind, kind_reason=reason,
        groups=np.array([row.group for row in rows], dtype=object) if has_groups else None,
        paths=tuple(row.path for row in rows), crop_boxes=boxes, fingerprint=fingerprint,
        skipped=tuple(sorted(skipped)), root=root, config=config)
    if cache:
        # Only decode failures are cached; rows rejected from the csv are found again on each load.
        _write_cache(cache_path, dataclasses.replace(dataset, skipped=tuple(sorted(decode_failures))))
    return dataset


def skip_summary(skipped: Sequence[tuple[int, str, str]], csv_name: str = LABELS_FILE, *,
                 shown: int = SKIPS_SHOWN) -> str | None:
    """One line about skipped rows, or None when there are none:
    ``skipped 3 rows of labels.csv: line 4 'a.png': file not found; line 9 ...; 1 more``."""
    if not skipped:
        return None
    quoted = "; ".join(f"line {line} '{path}': {reason}" for line, path, reason in skipped[:shown])
    more = f"; {len(skipped) - shown} more" if len(skipped) > shown else ""
    rows = "row" if len(skipped) == 1 else "rows"
    return f"skipped {len(skipped)} {rows} of {csv_name}: {quoted}{more}"


def check_targets_vary(dataset: Dataset) -> None:
    """Refuse targets a model cannot learn from: constant or near-constant values.

    A column is constant when its span (max - min) is at most ``1e-6`` of its largest magnitude
    (identical values included). Refused, per kind: scalar and angle when their one column is
    constant; vector when any column is (it cannot be standardized; drop it with --targets); coords
    when every column is; distribution when every row is the same distribution.

    Raises:
        DatasetError: naming the constant column(s) and the value, and the fix.
    """
    values = np.asarray(dataset.targets, dtype=np.float64)  # (N, T)
    if len(values) == 0:
        return
    if kind_data(dataset.kind).bins:
        if np.ptp(values, axis=0).max() <= _CONSTANT_SPAN:
            raise DatasetError(f"every row of {LABELS_FILE} has the same distribution; there is nothing to learn: "
                               "label images with different distributions")
        return
    span = np.ptp(values, axis=0)  # (T,)
    scale = np.maximum(np.abs(values).max(axis=0), np.finfo(np.float64).tiny)  # (T,)
    constant = span <= _CONSTANT_SPAN * scale
    if target_kind(dataset.kind).xy_points:  # one point's x or y may stay put; all of them may not
        constant = constant if constant.all() else np.zeros_like(constant)
    if not constant.any():
        return
    names = [name for name, flag in zip(dataset.names, constant) if flag]
    shown = ", ".join(f"{name} = {values[0, j]:.6g}" for j, (name, flag) in enumerate(zip(dataset.names, constant))
                      if flag)
    near = "" if (span[constant] == 0).all() else "nearly "
    fix = (f"drop it with --targets {','.join(n for n in dataset.names if n not in names)}"
           if len(names) < len(dataset.names)
           else "label images whose values differ")
    raise DatasetError(f"target {'column' if len(names) == 1 else 'columns'} {', '.join(names)} "
                       f"{'is' if len(names) == 1 else 'are'} {near}constant over all {len(values)} rows "
                       f"({shown}); a model cannot learn a value that never changes: {fix}")
