"""The configuration of a training run: :class:`TrainConfig` and the defaults behind its ``None`` values.

The constants here are what "pick the sensible default for the data" resolves to (the native-size
threshold, the default epoch budget, the one-cycle warm-up share, the default units); the plan
(:mod:`edgereg.training.planning.fit_plan`) and the fit (:mod:`edgereg.training.fitting.fit`) read them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from edgereg.core.tta import parse_tta
from edgereg.errors import EdgeregError, did_you_mean
from edgereg.json_values import json_safe

SCHEDULES = ("onecycle", "cosine", "constant")
SPLITS = ("auto", "random", "group")
INVARIANCES = ("auto", "none", "flip", "d4", "rotation")
REFERENCES = ("auto", "none", "ring", "corners")
PRECISIONS = ("auto", "fp32", "bf16")  # the training step's numeric format (edgereg.training.fitting.step)
SMALL_IMAGE = 64  # without --max-size: the input side when nothing else decides it
MAX_SIZE = 128  # default cap of the input side: native resolution up to this
AUTO_STEPS = 1500  # optimizer steps a default run without a time budget aims for
AUTO_EPOCHS = (30, 200)  # bounds of the default epoch count without a time budget
ONECYCLE_WARMUP = 0.3  # share of the one-cycle schedule spent raising the learning rate
DEFAULT_LR = 3e-3  # the peak learning rate of a fixed --model when --lr is not given
DEFAULT_UNITS = {"coords": "px", "angle": "deg"}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. ``None`` means "pick the sensible default for the data"."""

    targets: tuple[str, ...] | None = None  # columns to learn; None: all but path and group
    kind: str | None = None  # target kind; None: inferred from the columns (printed with the reason)
    range: tuple[float, float] | None = None  # bounded scalar (lo, hi); None: train data widened 5%
    units: tuple[str, ...] = ()  # one unit per target for the report and card ("" when unitless)
    strict: bool = False  # a bad row stops the run instead of being skipped and counted
    allow_outside: bool = False  # accept image paths that leave the folder of labels.csv
    model: str | None = None  # registry name; None or "auto": race the registry's candidates on validation
    model_kwargs: dict = field(default_factory=dict)  # the model's own options (see `edgereg models`)
    loss: str | None = None  # None: the kind's default (soft-label CE for distributions, else MSE)
    lr: float | str | None = None  # peak learning rate; "auto": LR range test; None: raced (or 3e-3)
    epochs: int | None = None  # upper bound; None: the budget decides, else ~1500 steps (30..200 epochs)
    time_budget_min: float | None = None  # minutes for the whole command: loading, race, fit(s), report
    batch_size: int = 64  # per process; BN statistics need more than a handful
    schedule: str = "onecycle"  # per-step LR schedule: warm-up then anneal converges fast on small data
    weight_decay: float = 1e-4  # AdamW's decoupled decay: mild, small models underfit before they overfit
    grad_clip: float = 5.0  # max gradient norm: one outlier batch cannot wreck the weights
    augment: str = "auto"  # preset[,key=value...] (see augment.parse_augment); auto respects the kind
    split: str = "auto"  # random | group; auto: group when the data has a group column (seed 002)
    folds: int | None = None  # K-fold cross-validation instead of one split
    val_frac: float = 0.2  # validation share: early stopping and model selection (>= 3 whole groups)
    test_frac: float = 0.15  # test share: reported only, never used to choose anything
    test_groups: tuple[str, ...] | None = None  # hold out exactly these groups as the test split
    seen_frac: float = 0.1  # group splits: share of train rows held back to measure memorisation
    seed: int = 0  # the split, the initialization, the shuffling and the augmentation all follow it
    input_size: tuple[int, int] | None = None  # (H, W); None: native after the crop, up to max_size
    max_size: int = MAX_SIZE  # cap of the automatic input side (smaller when the budget demands)
    channels: str | None = None  # rgb | gray; None: gray when every probed image is gray
    crop: str | None = None  # none | center | circle; None: per kind (circle for round samples)
    roi: tuple[float, float, float] | None = None  # fixed (cx, cy, r) of a sample that never moves
    tta: str = "none"  # the card's default test-time augmentation
    invariance: str = "auto"  # which image transforms leave the targets unchanged (or move them exactly)
    reference: str = "auto"  # divide colours by a reference region's mean (baked into the model)
    refit: bool | None = None  # retrain on train+val with the chosen settings; None: when groups are few
    test_dir: str | None = None  # an external test set (labels.csv folder); no internal test split then
    patience: int = 10  # epochs without validation improvement (after the one-cycle warm-up) before stopping
    sanity: bool = False  # overfit one batch first and fail loudly if the loss does not fall (seed 003)
    threads: int | None = None  # torch CPU threads; None: the cores divided among local processes
    device: str = "auto"  # auto | cpu | cuda
    deterministic: bool = True  # bit-identical reruns and resumes (deterministic oneDNN/cuDNN kernels, ~1.0-1.3x)
    precision: str = "auto"  # training step: auto (bf16 where native and matching fp32, measured), fp32, bf16
    eval_batch: int = 256  # images per forward pass when evaluating

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise EdgeregError(f"--schedule {self.schedule!r} is unknown; expected one of {', '.join(SCHEDULES)}")
        if self.invariance not in INVARIANCES:
            raise EdgeregError(f"--invariance {self.invariance!r} is unknown; expected one of {', '.join(INVARIANCES)}")
        if self.reference not in REFERENCES:
            raise EdgeregError(f"--reference {self.reference!r} is unknown; expected one of {', '.join(REFERENCES)}")
        if not isinstance(self.max_size, int) or self.max_size < 8:
            raise EdgeregError(f"--max-size must be an integer >= 8 pixels, got {self.max_size!r}")
        if self.precision not in PRECISIONS:
            raise EdgeregError(f"--precision {self.precision!r}{did_you_mean(str(self.precision), PRECISIONS)} is "
                               f"unknown; expected one of {', '.join(PRECISIONS)} "
                               "(auto: bf16 where the CPU has it natively and it matches fp32, else fp32)")
        if self.split not in SPLITS:
            raise EdgeregError(f"--split {self.split!r} is unknown; expected one of {', '.join(SPLITS)}")
        if self.lr is not None and not (isinstance(self.lr, str) and self.lr == "auto") and not (
                isinstance(self.lr, (int, float)) and 0 < self.lr < 10):
            raise EdgeregError(f"--lr must be a positive number below 10 or 'auto', got {self.lr!r}")
        for name in ("epochs", "batch_size", "patience", "eval_batch"):
            if name == "epochs" and self.epochs is None:
                continue
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                option = name.replace("_", "-")
                raise EdgeregError(f"--{option} must be a positive integer, got {getattr(self, name)!r}")
        if self.batch_size < 2:
            raise EdgeregError("--batch-size must be at least 2 (BatchNorm needs two samples per batch)")
        if self.folds is not None and self.folds < 2:
            raise EdgeregError(f"--folds must be at least 2, got {self.folds}")
        if self.time_budget_min is not None and self.time_budget_min <= 0:
            raise EdgeregError(f"--time-budget must be positive minutes, got {self.time_budget_min}")
        if self.range is not None and not self.range[0] < self.range[1]:
            raise EdgeregError(f"--range needs LO < HI, got {self.range[0]},{self.range[1]}")
        parse_tta(self.tta)

    def to_dict(self) -> dict:
        """JSON-ready (tuples become lists)."""
        return json_safe(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict` (lists back to tuples)."""
        known = {f.name for f in fields(cls)}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known}
        return cls(**values)

