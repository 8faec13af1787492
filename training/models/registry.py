"""The model registry: every architecture is a function registered by name with its defaults.

A model function has the signature ``name(*, in_channels, n_outputs, kind, input_size, **options)
-> nn.Module`` and maps ``(B, in_channels, H, W) float32`` normalized images to raw outputs
``(B, n_outputs)`` (see :mod:`edgereg.training.targets.heads` for what "raw" means per kind). The facts
about a model that are data, not code (its default input size and channels, the kinds it supports,
a one-line description), are registered next to it, like timm's pretrained configs::

    @register_model(input_size=(64, 64), kinds=KINDS)
    def cnn_small(*, in_channels, n_outputs, kind, input_size, width=16):
        ...

The first line of the function's docstring is the description shown by ``edgereg models``; the
extra keyword options (``width``) are what ``edgereg train --model-opt width=24`` sets (and
run.json records).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edgereg.cli.options import is_positive_int
from edgereg.core.card import KINDS
from edgereg.errors import EdgeregError, ShapeError, did_you_mean
from edgereg.training.targets.heads import check_kind
from edgereg.training.targets.kind_training import kind_training

_REQUIRED_PARAMETERS = ("in_channels", "n_outputs", "kind", "input_size")
_DEFAULT_MODEL = {"coords": "heatmap_small"}  # every other kind: "cnn_small"


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder and the facts `edgereg models` and the trainer read."""

    name: str  # the registry key, `family_size`, what `--model` takes
    build: Callable  # the registered function; call it through create_model, which validates
    input_size: tuple[int, int]  # (H, W) the model was designed for; the default when none is given
    channels: str  # "rgb" or "gray": the input it was designed for (3 or 1 channels)
    kinds: tuple[str, ...]  # target kinds it supports; create_model refuses the others
    description: str  # one line for the model table
    options: tuple[str, ...]  # extra keyword options of the builder (model kwargs in run.json)

    @property
    def in_channels(self) -> int:
        return 3 if self.channels == "rgb" else 1


_MODELS: dict[str, ModelEntry] = {}


def register_model(
    fn: Callable | None = None,
    *,
    input_size: tuple[int, int] = (64, 64),
    channels: str = "rgb",
    kinds: Sequence[str] = KINDS,
    description: str | None = None,
):
    """Decorator that registers a model function under its own name.

    Use as ``@register_model`` (all defaults) or ``@register_model(input_size=..., ...)``.

    Args:
        fn: the model function, when used without arguments.
        input_size: (H, W) default input size in pixels.
        channels: "rgb" or "gray", the default input.
        kinds: the target kinds the model supports.
        description: one line for ``edgereg models``; default: the first docstring line.

    Returns:
        ``fn`` unchanged, or the decorator that returns its function unchanged.
    """

    def decorate(fn: Callable) -> Callable:
        name = fn.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        params = inspect.signature(fn).parameters
        keyword_only = {p for p, param in params.items() if param.kind is inspect.Parameter.KEYWORD_ONLY}
        missing = [p for p in _REQUIRED_PARAMETERS if p not in keyword_only]
        if missing:
            raise TypeError(f"model function {name!r} needs keyword-only parameters {missing}")
        unknown_kinds = set(kinds) - set(KINDS)
        if unknown_kinds:
            raise ValueError(f"model {name!r} lists unknown kinds {sorted(unknown_kinds)}")
        if channels not in ("rgb", "gray"):
            raise ValueError(f"model {name!r}: channels must be 'rgb' or 'gray', got {channels!r}")
        doc_line = (inspect.getdoc(fn) or "").strip().splitlines()
        _MODELS[name] = ModelEntry(
            name=name,
            build=fn,
            input_size=(int(input_size[0]), int(input_size[1])),
            channels=channels,
            kinds=tuple(kinds),
            description=description or (doc_line[0] if doc_line else ""),
            options=tuple(p for p in params if p not in _REQUIRED_PARAMETERS),
        )
        return fn

    return decorate if fn is None else decorate(fn)


def list_models(*, kind: str | None = None) -> list[str]:
    """Registered model names in registration order, optionally only those supporting ``kind``."""
    if kind is not None:
        check_kind(kind)
    return [name for name, entry in _MODELS.items() if kind is None or kind in entry.kinds]


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; raises EdgeregError with a did-you-mean when unknown."""
    entry = _MODELS.get(name)
    if entry is None:
        raise EdgeregError(
            f"unknown model {name!r}{did_you_mean(name, _MODELS)}; expected one of "
            f"{', '.join(_MODELS)} (`edgereg models` lists them)"
        )
    return entry


def default_model(kind: str) -> str:
    """The model the trainer uses for ``kind`` when none is asked for."""
    check_kind(kind)
    return _DEFAULT_MODEL.get(kind, "cnn_small")


def create_model(
    name: str,
    *,
    n_outputs: int,
    kind: str,
    in_channels: int | None = None,
    input_size: tuple[int, int] | None = None,
    **options,
):
    """Build a registered model after checking every argument.

    Args:
        name: a registered name (see :func:`list_models`).
        n_outputs: width of the raw output, e.g. ``OutputTransform.n_outputs`` (2 per angle target).
        kind: the target kind; decides the head.
        in_channels: 3 (rgb) or 1 (gray); default: the model's own.
        input_size: (H, W) in pixels; default: the model's own.
        **options: the model's own keyword options (``ModelEntry.options``).

    Returns:
        An ``nn.Module`` mapping ``(B, in_channels, H, W) float32`` to ``(B, n_outputs) float32``,
        with ``model.input_shape = (in_channels, H, W)`` recorded for export.

    Raises:
        EdgeregError: unknown name, unsupported kind, unknown option, bad output width.
        ShapeError: an input size or channel count the model cannot take.
    """
    entry = model_entry(name)
    check_kind(kind)
    if kind not in entry.kinds:
        raise EdgeregError(
            f"model {name!r} does not support kind {kind!r} (it supports {', '.join(entry.kinds)}); "
            f"use --model {default_model(kind)} or another of {', '.join(list_models(kind=kind))}"
        )
    for option in options:
        if option not in entry.options:
            choices = ", ".join(entry.options) or "none"
            raise EdgeregError(
                f"model {name!r} has no option {option!r}{did_you_mean(option, entry.options)}; "
                f"its options are: {choices}"
            )
    n_outputs = _positive_int(n_outputs, "n_outputs")
    if kind_training(kind).paired_outputs and n_outputs % 2:
        raise EdgeregError(
            f"kind {kind!r} needs an even number of raw outputs ((x, y) or (sin, cos) pairs), "
            f"got n_outputs={n_outputs}; use OutputTransform.n_outputs"
        )
    in_channels = entry.in_channels if in_channels is None else _positive_int(in_channels, "in_channels")
    if in_channels not in (1, 3):
        raise ShapeError(f"in_channels must be 3 (rgb) or 1 (gray), got {in_channels}")
    input_size = entry.input_size if input_size is None else _input_size(input_size)
    model = entry.build(in_channels=in_channels, n_outputs=n_outputs, kind=kind,
                        input_size=input_size, **options)
    model.input_shape = (in_channels, *input_size)
    return model


def count_parameters(model) -> int:
    """Number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def require_input_size(input_size: tuple[int, int], minimum: int, *, model: str) -> None:
    """Raise ShapeError when the input is smaller than a model's ``minimum`` side in pixels."""
    if min(input_size) < minimum:
        raise ShapeError(
            f"model {model!r} needs an input of at least {minimum}x{minimum} pixels, got "
            f"{input_size[0]}x{input_size[1]}; use a larger --input-size"
        )


def positive_ints(value, *, option: str, model: str) -> tuple[int, ...]:
    """A model option that is a positive integer or a sequence of them, as a tuple of ints.

    Raises:
        EdgeregError: naming the model and option, e.g. for ``--model-opt width=-3``.
    """
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not values or not all(is_positive_int(v) for v in values):
        raise EdgeregError(
            f"model {model!r} option {option!r} must be a positive integer or a list of them, "
            f"got {value!r}; e.g. --model-opt {option}=2 or {option}=[2,2]"
        )
    return tuple(int(v) for v in values)


def _positive_int(value, what: str) -> int:
    if not is_positive_int(value):
        raise EdgeregError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _input_size(value) -> tuple[int, int]:
    size = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(size) != 2 or not all(is_positive_int(s) for s in size):
        raise ShapeError(f"input_size must be (H, W) positive integers, got {value!r}")
    return int(size[0]), int(size[1])
