"""The model card: everything the runtime needs to know about a model, stored inside the .onnx.

The card is JSON in the ONNX ``metadata_props`` under the key ``edgereg``. The runtime configures
itself from it (preprocessing, target names, units, TTA); CLI flags may override it. Reading
validates every field and raises :class:`~edgereg.errors.CardError` with one clear line.

Writing a card into a model needs the ``onnx`` package and lives in ``edgereg.export.card_io``;
reading needs only onnxruntime.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edgereg.core.kinds import KIND_BY_NAME, KIND_NAMES, TargetKind
from edgereg.core.tta import parse_tta
from edgereg.errors import CardError, ModelFileError, did_you_mean
from edgereg.preprocess.config import PreprocessingFacts, check_preprocessing, field_error, is_finite_number

CARD_KEY = "edgereg"
INPUT_NAME = "image"  # the ONNX graph's one input, (N, C, H, W) float32 (docs/CONTRACTS.md, "ONNX model I/O")
OUTPUT_NAME = "value"  # its first output, (N, T) float32
NOVELTY_NAME = "novelty"  # an optional second output, (N, 1) float32: the novelty score (card.novelty)
FORMAT_VERSION = 1
KINDS = KIND_NAMES  # ("scalar", "vector", "distribution", "coords", "angle"); see edgereg.core.kinds
CARD_FILE_LIMIT = 16 << 20  # bytes: a card is a few KB; provenance may add some


@dataclass(frozen=True)
class ModelCard(PreprocessingFacts):
    """What a model is and how to feed it. Units are physical unless said otherwise.

    The ONNX model takes ``(N, C, H, W) float32`` (C = 3 for rgb, 1 for gray) and returns
    ``(N, T) float32`` with T = ``len(targets)``: physical units for scalar/vector/distribution,
    degrees for angle, and for coords ``[0, 1]`` of the model input (the runtime maps them back to
    the original image's pixels through each image's crop).
    """

    kind: str  # one of KINDS: decides the head, the TTA reduction and the metrics
    targets: tuple[str, ...]  # output column names; coords come as x,y pairs, angle has one
    input_size: tuple[int, int]  # (H, W) of the model input in pixels
    units: tuple[str, ...] = ()  # one unit string per target ("" when unitless); () = all ""
    range: tuple[tuple[float, float], ...] | None = None  # (lo, hi) per target for bounded kinds
    channels: str = "rgb"  # "rgb" or "gray" (BGR->gray with OpenCV's weights)
    crop: str = "center"  # "none" (resize whole frame), "center" (square), "circle" (square + mask)
    roi: tuple[float, float, float] | None = None  # fixed (cx, cy, r) in source pixels, or None
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)  # per channel, pixel values scaled to [0, 1]
    std: tuple[float, ...] = (0.25, 0.25, 0.25)  # per channel, > 0
    fill: float = 0.0  # normalized value written outside the circle
    tta: str = "none"  # default TTA: "none", "d4" or "rot:N"
    decode: str = "full"  # how files are decoded: "full", or "reduced" (DCT-domain 1/2..1/8 for big crops)
    provenance: dict[str, Any] = field(default_factory=dict)  # dataset, metrics, seed, versions
    quantization: dict[str, Any] = field(default_factory=dict)  # calibration and int8 deltas
    # Lab-grade readings (docs/lab-grade.md); empty for models exported before they existed:
    intervals: dict[str, Any] = field(default_factory=dict)  # conformal quantiles (edgereg.lab.intervals)
    calibration: dict[str, Any] = field(default_factory=dict)  # reading -> reference (edgereg.lab.calibration)
    validation: dict[str, Any] = field(default_factory=dict)  # LoB/LoD/LoQ and range (edgereg.lab.readout)
    # the novelty output's threshold (edgereg.export.uncertainty.novelty)
    novelty: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def target_kind(self) -> TargetKind:
        """The :class:`edgereg.core.kinds.TargetKind` named by ``kind``."""
        return KIND_BY_NAME[self.kind]

    @property
    def unit_of(self) -> dict[str, str]:
        units = self.units or ("",) * len(self.targets)
        return dict(zip(self.targets, units))

    def with_(self, **changes: Any) -> ModelCard:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str = "model card") -> ModelCard:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CardError(f"{source}: the card is not valid JSON ({exc.msg} at char {exc.pos}); "
                            "re-export the model with `edgereg export`") from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "model card") -> ModelCard:
        if not isinstance(data, dict):
            raise CardError(f"{source}: expected a JSON object, got {type(data).__name__}")
        version = data.get("format_version", None)
        if not isinstance(version, int) or isinstance(version, bool):
            raise CardError(f"{source}: field 'format_version' must be an integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise CardError(
                f"{source}: card format_version {version} is newer than this edgereg reads "
                f"({FORMAT_VERSION}); upgrade: pip install -U edgereg"
            )
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise CardError(f"{source}: unknown field {key!r}{did_you_mean(key, known)}")
        required = ("kind", "targets", "input_size")
        for key in required:
            if key not in data:
                raise CardError(f"{source}: missing required field {key!r}")
        kwargs = dict(data)
        try:
            for key in ("targets", "units", "input_size", "mean", "std"):
                if key in kwargs:
                    kwargs[key] = _as_tuple(kwargs[key], key)
            if kwargs.get("roi") is not None:
                kwargs["roi"] = _as_tuple(kwargs["roi"], "roi")
            if kwargs.get("range") is not None:
                kwargs["range"] = tuple(_as_tuple(r, "range") for r in _as_tuple(kwargs["range"], "range"))
            return cls(**kwargs)
        except CardError as exc:
            raise CardError(f"{source}: {exc}") from None


def _as_tuple(value: Any, name: str) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise CardError(f"field {name!r} must be a list, got {value!r}")
    return tuple(value)


def _validate(card: ModelCard) -> None:
    bad = field_error

    if not isinstance(card.kind, str) or card.kind not in KIND_BY_NAME:
        raise CardError(f"field 'kind' is {card.kind!r}{did_you_mean(str(card.kind), KINDS)}; "
                        f"expected one of {', '.join(KINDS)}")
    if not card.targets or not all(isinstance(t, str) and t for t in card.targets):
        raise bad("targets", "a non-empty list of names", card.targets)
    if len(set(card.targets)) != len(card.targets):
        raise bad("targets", "unique names", card.targets)
    problem = card.target_kind.targets_problem(card.targets)
    if problem is not None:
        raise bad("targets", problem, card.targets)
    if card.units and (len(card.units) != len(card.targets) or not all(isinstance(u, str) for u in card.units)):
        raise bad("units", f"{len(card.targets)} strings (one per target)", card.units)
    if len(card.input_size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and 8 <= s <= 4096
                                            for s in card.input_size):
        raise bad("input_size", "[H, W] with integers in 8..4096", card.input_size)
    check_preprocessing(card)
    if card.range is not None:
        if len(card.range) != len(card.targets) or not all(
            len(r) == 2 and is_finite_number(r[0]) and is_finite_number(r[1]) and r[0] < r[1] for r in card.range
        ):
            raise bad("range", f"{len(card.targets)} [lo, hi] pairs with lo < hi, or null", card.range)
    try:
        parse_tta(card.tta)
    except Exception:
        raise bad("tta", "'none', 'd4' or 'rot:N'", card.tta) from None
    if not isinstance(card.provenance, dict):
        raise bad("provenance", "an object", card.provenance)
    if not isinstance(card.quantization, dict):
        raise bad("quantization", "an object", card.quantization)
    _validate_lab_sections(card, bad)


def _validate_lab_sections(card: ModelCard, bad) -> None:
    """Parse the lab sections, so a malformed one fails when the card is read, not mid-run."""
    from edgereg.lab.calibration import parse_calibration
    from edgereg.lab.intervals import parse_intervals
    from edgereg.lab.limits import parse_validation

    for name in ("intervals", "calibration", "validation", "novelty"):
        if not isinstance(getattr(card, name), dict):
            raise bad(name, "an object", getattr(card, name))
    novelty_threshold(card)
    parse_intervals(card.intervals, card.targets)
    parse_calibration(card.calibration, card.targets)
    parse_validation(card.validation, card.targets)


def novelty_threshold(card: ModelCard) -> float | None:
    """The ``unfamiliar`` threshold of the ``novelty`` output (card.novelty), or None when the card
    has none (models exported before it, or --no-novelty; an infinite threshold flags nothing).

    Raises:
        CardError: a malformed section.
    """
    if not card.novelty:
        return None
    value = card.novelty.get("threshold", "missing")
    if value is None:
        return math.inf  # too few held-out rows to set it: nothing is flagged
    if not is_finite_number(value) or not value >= 0:
        raise CardError(f"field 'novelty': threshold must be a number >= 0 or null, got {value!r}; re-export the "
                        "model with `edgereg export`")
    return float(value)


def int8_speed_note(card: ModelCard, batch_size: int | None = None) -> str | None:
    """One line when the card says its int8 model ran no faster than fp32 at export, else None.

    The export's speed control records ``quantization.speed`` (see ``edgereg.export.int8.search``):
    int8 against fp32 images/s per batch size on the export machine and the recommended model.

    Args:
        card: the model's card.
        batch_size: the batch size the caller runs (the measured batch size nearest to it is
            consulted); None: note when fp32 was recommended.
    """
    speed = card.quantization.get("speed") if card.quantization else None
    if not isinstance(speed, dict) or not speed.get("measured"):
        return None
    ratios = {int(b): r for b, r in (speed.get("int8_vs_fp32") or {}).items()
              if str(b).isdigit() and isinstance(r, (int, float))}
    if not ratios:
        return None
    if batch_size is None:
        slow = speed.get("recommended") == "fp32"
    else:
        nearest = min(ratios, key=lambda b: (abs(b - batch_size), b))
        slow = ratios[nearest] <= 1.0
    if not slow:
        return None
    measured = ", ".join(f"{ratio:.2f}x at batch {batch}" for batch, ratio in sorted(ratios.items()))
    machine = f" on {speed['machine']}" if speed.get("machine") else ""
    return (f"this int8 model ran no faster than fp32 when exported (int8/fp32 {measured}{machine}); "
            "deploy model.onnx on such a machine, or run `edgereg bench` on yours to compare")


def card_from_metadata(metadata: dict[str, str], *, source: str) -> ModelCard:
    """Build the card from an ONNX model's metadata map (``{key: json_text}``)."""
    if CARD_KEY not in metadata:
        raise CardError(
            f"{source}: no edgereg model card (metadata key {CARD_KEY!r} is missing); "
            "export the model with `edgereg export`, or pass --card CARD.json"
        )
    return ModelCard.from_json(metadata[CARD_KEY], source=source)


def read_card_file(path: str | Path) -> ModelCard:
    """Read and validate a card saved as JSON (``--card CARD.json``), e.g. from ``edgereg info --json``.

    Raises:
        CardError: the file is missing, unreadable, not JSON, or not a valid card.
    """
    from edgereg.errors import DecodeError
    from edgereg.preprocess.decode import read_file_bytes

    path = Path(path)
    if not path.exists():
        raise CardError(f"card file not found: '{path}'; write one with `edgereg info MODEL --json > {path}`")
    try:  # regular files only (a FIFO would block), and nothing the size of a disk image
        text = read_file_bytes(path, max_bytes=CARD_FILE_LIMIT).decode("utf-8")
    except DecodeError as exc:
        raise CardError(f"cannot read card file: {str(exc).replace('an image', 'a card')}") from None
    except UnicodeDecodeError as exc:
        raise CardError(f"cannot read card file '{path}' (not UTF-8 text at byte {exc.start}); expected a "
                        "UTF-8 JSON file") from None
    return ModelCard.from_json(text, source=str(path))


def read_card(model_path: str | Path) -> ModelCard:
    """Read and validate the card of an ONNX file (needs only onnxruntime)."""
    import onnxruntime as ort

    path = Path(model_path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: '{path}'; check the path (expected an .onnx file)")
    try:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors on bad files
        raise ModelFileError(f"'{path}' is not a loadable ONNX model ({_first_line(exc)}); "
                             "export it again with `edgereg export`") from None
    return card_from_metadata(session.get_modelmeta().custom_metadata_map, source=str(path))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
