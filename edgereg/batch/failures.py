"""Why an input failed, in one line: the reason written to the errors file (and sent by ``edgereg serve``)."""

from __future__ import annotations

from edgereg.errors import EdgeregError
from edgereg.preprocess.decode import explain_cv2_error


def failure_reason(exc: BaseException, key: str) -> str:
    """The error message without the ``'path': `` prefix that edgereg's errors start with; an
    OpenCV exception becomes a sentence (``explain_cv2_error``), never its assertion text."""
    import cv2

    if isinstance(exc, cv2.error):
        return explain_cv2_error(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    prefix = f"'{key}': "
    if text.startswith(prefix):
        text = text[len(prefix):]
    return text if isinstance(exc, EdgeregError) else f"{type(exc).__name__}: {text}"


__all__ = ["failure_reason"]
