"""Option parsers and options shared by several commands (argparse ``type=`` functions).

Each parser raises ``argparse.ArgumentTypeError`` with the expected form, so argparse prints one
line and exits with code 2, like any other usage error. The number types, for every command:

* integers: :func:`count` (``count(1)``, ``count(0)``, ``count(1, 256)``: in a range),
  :func:`positive_int` (a whole number >= 1);
* floats: :data:`positive` (finite, > 0), :data:`non_negative` (finite, >= 0), :data:`finite`,
  :data:`level` (a fraction in (0, 1), e.g. a confidence);
* :func:`pixels` (``--max-pixels``: 50M, 12.5MP, 8000000, 0);
* :func:`is_positive_int`: the same test for values that are not command-line text (a model option
  given as JSON).
"""

from __future__ import annotations

import argparse
import math
import re

from edgereg.preprocess.decode import DEFAULT_MAX_PIXELS, format_megapixels

MAX_THREADS = 256  # thread-count options: more than any machine edgereg runs on has cores, far below
# what would exhaust memory (a typo like --decode-threads 100000 must not start 100,000 threads)
MAX_PIXELS_HELP = (f"refuse images larger than this, read from the file header before decoding: a count "
                   f"like 50M, 12.5MP or 8000000; 0 for no limit (default {format_megapixels(DEFAULT_MAX_PIXELS)})")


def count(minimum: int, maximum: int | None = None):
    """A parser of integers in ``minimum..maximum``."""
    def parse(text: str) -> int:
        bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer {bounds}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected an integer {bounds}, got {value}")
        return value
    return parse


def number(accept, unparsable: str, rejected: str):
    """A parser of floats that ``accept(value)`` admits; the errors say "expected <unparsable>" for
    text that is not a number and "expected <rejected>" for a number outside the admitted set."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {unparsable}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {rejected}, got {text}")
        return value
    return parse


def is_positive_int(value: object) -> bool:
    """Whether ``value`` is a whole number >= 1 (``2`` or ``2.0``; not ``True``, ``2.5`` or ``"2"``)."""
    try:
        return not isinstance(value, (bool, str)) and int(value) == value and value >= 1  # type: ignore[call-overload,operator]
    except (TypeError, ValueError, OverflowError):
        return False


def positive_int(text: str) -> int:
    """A whole number >= 1 (``--n``, ``--size``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


positive = number(lambda value: value > 0 and math.isfinite(value), "a number > 0", "a finite number > 0")
non_negative = number(lambda value: value >= 0 and math.isfinite(value), "a number >= 0", "a finite number >= 0")
finite = number(math.isfinite, "a number", "a finite number")
level = number(lambda value: 0 < value < 1, "a level such as 0.9", "a level in (0, 1) such as 0.9")


def pixels(text: str) -> int | None:
    """``--max-pixels``: ``50M``, ``50MP``, ``12.5M``, ``8000000`` or ``0`` (None: no limit)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*(m|mp|k|kp)?\s*", text.lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a pixel count like 50M, 12.5MP or 8000000 (0: no limit), "
                                         f"got {text!r}")
    scale = {None: 1, "k": 1e3, "kp": 1e3, "m": 1e6, "mp": 1e6}[match.group(2)]
    value = float(match.group(1)) * scale
    if value > 1e12:
        raise argparse.ArgumentTypeError(f"expected at most 1,000,000 MP, got {text!r}")
    return int(value) or None


def add_card_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--card CARD.json``: use this card instead of (or for a model without) the embedded one."""
    parser.add_argument("--card", metavar="CARD.json",
                        help="use this model card (JSON, as `edgereg info MODEL --json` prints it) instead of "
                             "the one embedded in the model, e.g. for an ONNX file exported elsewhere")


def card_from_option(args):
    """The ``--card`` file's ModelCard, or None when the option was not given."""
    if not getattr(args, "card", None):
        return None
    from edgereg.core.card import read_card_file

    return read_card_file(args.card)


def add_smoothing_options(group: argparse._ArgumentGroup) -> None:
    """``--smooth``, ``--smooth-method`` and ``--stable-tol`` of a live readout (infer --camera, serve)."""
    group.add_argument("--smooth", type=count(1), default=5, metavar="N",
                       help="smooth over N frames; stable = held within tolerance for N frames (default 5)")
    group.add_argument("--smooth-method", choices=("median", "ema"), default="median",
                       help="median (default; ignores odd frames) or ema")
    group.add_argument("--stable-tol", type=float, default=None, metavar="X",
                       help="tolerance of 'stable' in target units (default: 1%% of the card's range)")

