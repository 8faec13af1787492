"""Typed errors. Every message says what went wrong, expected vs got, and the fix.

The CLI prints ``str(error)`` on one line (no traceback) and exits with ``error.exit_code``.
"""

from __future__ import annotations

import difflib
import errno
from collections.abc import Iterable


class EdgeregError(Exception):
    """Base class of every error edgereg raises on purpose (a user mistake or bad input)."""

    exit_code = 2


class CardError(EdgeregError):
    """The model card in an ONNX file is missing, malformed or of a newer format version."""


class ModelFileError(EdgeregError):
    """The model file is missing, unreadable or not an ONNX model edgereg can run."""


class ShapeError(EdgeregError):
    """An array has the wrong shape or dtype."""


class DecodeError(EdgeregError):
    """An image file could not be read or decoded."""


class ProviderError(EdgeregError):
    """An execution provider was asked for that this onnxruntime build does not have."""


class TTAError(EdgeregError):
    """A test-time augmentation that the model's target kind or input shape cannot support."""


class DatasetError(EdgeregError):
    """A dataset (labels.csv and images) that cannot be used as given."""


class MissingExtraError(EdgeregError):
    """An optional dependency is missing; the message names the pip extra to install."""


class CameraError(EdgeregError):
    """A camera or stream could not be opened or stopped delivering frames."""


class OutputError(EdgeregError):
    """An output file or folder cannot be created or written (read-only, missing folder, in the way)."""


class WriteFailedError(OutputError):
    """Writing stopped in the middle of a run (disk full, quota, I/O error).

    Exit code 1: the run did part of its work; what was written before is intact (whole rows).
    """

    exit_code = 1


class IncompleteRunError(EdgeregError):
    """A distributed run ended without a row or an error for some inputs (a block lost on the way).

    Exit code 1: what came back is committed; ``--resume`` scores the missing inputs.
    """

    exit_code = 1


class GateError(EdgeregError):
    """The int8 accuracy gate failed: the quantized model is too far from fp32."""

    exit_code = 1


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def require_extra(module: str, extra: str = "train"):
    """Import ``module`` or raise MissingExtraError naming ``pip install 'edgereg[extra]'``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"this command needs {module!r}, which is not installed: "
            f"pip install 'edgereg[{extra}]' (or run `make venv`)"
        ) from exc


_OS_REASONS = {
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EISDIR: "a folder is in the way (it is a directory)",
    errno.EEXIST: "a file is in the way",
    errno.ENOTDIR: "a file is in the way of a folder in its path",
    errno.ENOENT: "its folder does not exist",
    errno.EFBIG: "file too large for the file system",
    errno.EIO: "input/output error",
    errno.ENAMETOOLONG: "file name too long",
}
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def os_error_reason(exc: OSError) -> str:
    """A few words for an OSError: ``read-only file system``, ``no space left on device``, ..."""
    fallback = exc.strerror or type(exc).__name__
    return fallback if exc.errno is None else _OS_REASONS.get(exc.errno, fallback)


def output_error(exc: OSError, path, *, fix: str = "choose another --out", mid_run: bool = False,
                 resumable: bool = False) -> OutputError:
    """The typed error for failing to write ``path``: one line with the reason and ``fix``.

    ``mid_run`` (some output was already written) gives :class:`WriteFailedError` (exit 1);
    ``resumable`` says that ``--resume`` continues the work.
    """
    reason = os_error_reason(exc)
    if exc.errno == errno.ENOENT:
        import os

        reason = f"folder '{os.path.dirname(os.fspath(path)) or '.'}' does not exist"
        fix = f"create it first (mkdir -p) or {fix}"
    elif exc.errno in FULL_ERRNOS:
        fix = "free some space, then run again" + (" with --resume" if resumable else "")
    cls = WriteFailedError if mid_run else OutputError
    return cls(f"cannot write '{path}': {reason}; {fix}")
