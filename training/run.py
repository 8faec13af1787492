"""The run directory: what training leaves behind and what export reads back.

``RUN_DIR/`` holds:

* ``run.json``: everything needed to rebuild the model and its card (model name and options, kind,
  targets, units, output transform, preprocessing, TTA default, dataset root and fingerprint,
  split indices, seed, training configuration, library versions, summary metrics, status).
* ``checkpoint.pt``: the latest epoch (model, optimizer, scheduler, history, best weights) for
  ``--resume``; ``best.pt``: the best validation weights, what :func:`load_run` loads.
* ``metrics.json`` and ``report.png``: the report.

Every file is written atomically (temporary file, fsync, rename), so a run killed at any moment
leaves each file either complete or absent. Checkpoints hold only tensors and plain Python values
and are read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgereg.core.card import ModelCard
from edgereg.errors import EdgeregError
from edgereg.files import atomic_replace
from edgereg.json_values import json_safe
from edgereg.preprocess import PreprocessConfig

RUN_FORMAT = 1
RUN_FILE = "run.json"
CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.png"


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers only ever see the old or the complete new file
    (``edgereg.files.atomic_replace``, the rename made durable).

    Raises:
        OSError: the file could not be written; no temporary file is left behind.
    """
    return atomic_replace(path, data, sync_folder=True)




def write_json(path: str | Path, data: dict) -> Path:
    """Atomically write ``data`` as indented JSON (see :func:`edgereg.json_values.json_safe`)."""
    return atomic_write_bytes(path, (json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n").encode())


def read_json(path: str | Path) -> dict:
    """Read a run file; a missing or broken file is an EdgeregError naming the fix."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a folder, or a FIFO that would block the read
        raise EdgeregError(f"'{path}' is not a regular file; expected a run directory made by `edgereg train`")
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgeregError(f"'{path}' not found: expected a run directory made by `edgereg train DATA --out RUN`") \
            from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgeregError(f"'{path}' is not valid JSON ({exc}); retrain with `edgereg train`") from None


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Atomically ``torch.save`` a dict of tensors and plain Python values."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, *, map_location: str = "cpu") -> dict:
    """``torch.load(path, weights_only=True)`` with a one-line error for a missing or damaged file."""
    path = Path(path)
    if not path.is_file():
        raise EdgeregError(f"checkpoint '{path}' not found; train first with `edgereg train DATA --out {path.parent}`")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several untyped errors for damaged files
        raise EdgeregError(f"checkpoint '{path}' cannot be read ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); retrain or delete it") from None


@dataclass(frozen=True)
class RunInfo:
    """What export and eval need to know about a finished run (read from run.json).

    Attributes:
        card: the model card (everything but ``quantization``); provenance holds the dataset
            fingerprint, metrics, seed, versions and date.
        dataset_root: the dataset directory the run trained on.
        targets: target column names.
        split: the train / val / test row indices into the dataset as loaded.
        preprocess: the preprocessing the model expects (normalization from the train split).
        metrics: the summary metrics recorded in run.json.
        model_name: registry name; model_kwargs: its options.
        run_dir: the run directory.
        record: the whole run.json.
    """

    card: ModelCard
    dataset_root: Path
    targets: tuple[str, ...]
    split: Any  # edgereg.training.planning.splits.Split
    preprocess: PreprocessConfig
    metrics: dict
    model_name: str
    model_kwargs: dict
    run_dir: Path
    record: dict


def preprocess_from_record(record: dict, key: str = "preprocess") -> PreprocessConfig:
    """A PreprocessConfig stored in run.json (``record[key]``)."""
    fields = dict(record[key])
    fields["input_size"] = tuple(fields["input_size"])
    fields["mean"], fields["std"] = tuple(fields["mean"]), tuple(fields["std"])
    fields["roi"] = None if fields.get("roi") is None else tuple(fields["roi"])
    return PreprocessConfig(**fields)


def card_from_record(record: dict) -> ModelCard:
    """The model card of a run (quantization left empty for export to fill in)."""
    config = preprocess_from_record(record)
    summary = record.get("metrics") or {}
    provenance = {
        "dataset_fingerprint": record["dataset"]["fingerprint"],
        "dataset": record["dataset"]["root"],
        "model": record["model"]["name"],
        "seed": record["seed"],
        "split": record["split"]["mode"],
        "versions": record["versions"],
        "date": record["created"],
        "metrics": {name: summary[name] for name in ("val", "test", "cv") if name in summary},
    }
    ranges = record.get("range")
    return ModelCard(
        kind=record["kind"], targets=tuple(record["targets"]), input_size=config.input_size,
        units=tuple(record["units"]), range=None if ranges is None else tuple(tuple(r) for r in ranges),
        channels=config.channels, crop=config.crop, roi=config.roi, mean=config.mean, std=config.std,
        fill=config.fill, tta=record["tta"], decode=config.decode, provenance=provenance,
    )


def split_from_record(record: dict):
    """The Split stored in run.json."""
    from edgereg.training.planning.splits import Split

    return Split.from_dict(record["split"])


def read_run_info(run_dir: str | Path) -> RunInfo:
    """Read run.json of a run directory (no weights)."""
    run_dir = Path(run_dir)
    record = read_json(run_dir / RUN_FILE)
    if record.get("format", 0) > RUN_FORMAT:
        raise EdgeregError(f"'{run_dir / RUN_FILE}' has format {record.get('format')}, newer than this edgereg "
                           f"reads ({RUN_FORMAT}); upgrade: pip install -U edgereg")
    return RunInfo(
        card=card_from_record(record), dataset_root=Path(record["dataset"]["root"]),
        targets=tuple(record["targets"]), split=split_from_record(record),
        preprocess=preprocess_from_record(record), metrics=record.get("metrics") or {},
        model_name=record["model"]["name"], model_kwargs=dict(record["model"]["kwargs"]),
        run_dir=run_dir, record=record,
    )


def build_regressor(record: dict):
    """A freshly initialized Regressor with the architecture and output transform of run.json."""
    from edgereg.training.models import create_model
    from edgereg.training.planning.reference import build_reference
    from edgereg.training.targets.regressor import OutputTransform, Regressor

    transform = OutputTransform.from_dict(record["output_transform"])
    spec = record["model"]
    model = create_model(spec["name"], n_outputs=transform.n_outputs, kind=record["kind"],
                         in_channels=spec["in_channels"], input_size=tuple(spec["input_size"]), **spec["kwargs"])
    reference = None
    if record.get("reference"):
        preprocess = record["preprocess"]
        reference = build_reference(record["reference"], input_size=tuple(spec["input_size"]),
                                    mean_in=preprocess["mean"], std_in=preprocess["std"],
                                    circle=preprocess["crop"] == "circle")
    return Regressor(model, transform, reference)


def load_run(run_dir: str | Path):
    """The trained model (best validation weights, eval mode, CPU) and its RunInfo.

    Returns:
        (Regressor, RunInfo). ``Regressor.forward`` maps ``(N, C, H, W) float32`` normalized images
        to ``(N, T)`` physical units.

    Raises:
        EdgeregError: not a finished run directory, or damaged files.
    """
    info = read_run_info(run_dir)
    if info.record.get("status") != "done":
        raise EdgeregError(f"run '{run_dir}' has not finished training (status {info.record.get('status')!r}); "
                           f"continue it with `edgereg train {info.dataset_root} --out {run_dir} --resume`")
    regressor = build_regressor(info.record)
    regressor.load_state_dict(load_checkpoint(Path(run_dir) / BEST_FILE))
    regressor.eval()
    return regressor, info


def load_run_dataset(info: RunInfo, *, threads: int | None = None):
    """Reload the run's dataset (through the disk cache) in the same row order as training.

    Raises:
        DatasetError: the dataset changed since training (its fingerprint differs), so the stored
            split indices would point at other images.
    """
    from edgereg.data.dataset import load_dataset
    from edgereg.errors import DatasetError

    stored = info.record["dataset"]
    dataset = load_dataset(info.dataset_root, config=preprocess_from_record(stored, "loaded_with"),
                           targets=stored["targets"], kind=stored["kind"], strict=stored["strict"],
                           threads=threads)
    if dataset.fingerprint != stored["fingerprint"]:
        raise DatasetError(f"dataset '{info.dataset_root}' changed since run '{info.run_dir}' was trained "
                           f"(fingerprint {dataset.fingerprint[:12]} vs {stored['fingerprint'][:12]}); "
                           "retrain, or restore the original files")
    return dataset



def failure_reason(exc: BaseException) -> str:
    """One line for run.json's ``failure``: the typed message, or the exception's type and first line."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C or a stop signal); continue with --resume"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, EdgeregError) else f"{type(exc).__name__}: {text}".rstrip(": ")


def mark_failed(run_dir: str | Path, reason: str) -> list[Path]:
    """Set ``status: failed`` and ``failure: reason`` in every run.json under ``run_dir`` (the run and
    its folds) that still says ``training``. Best effort: a file that cannot be rewritten (a full
    disk) is left as it is.

    Returns:
        The run.json files marked.
    """
    run_dir = Path(run_dir)
    marked = []
    for path in [run_dir / RUN_FILE, *sorted(run_dir.glob(f"fold*/{RUN_FILE}"))]:
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict) or record.get("status") != "training":
                continue
            record.update(status="failed", failure=reason)
            write_json(path, record)
            marked.append(path)
        except (OSError, ValueError):
            continue
    return marked
