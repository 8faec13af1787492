"""Deterministic convolution kernels for the duration of a run."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def kernel_flags(*, deterministic: bool):
    """Within the block, pick deterministic convolution kernels when asked.

    oneDNN's CPU convolutions (and cuDNN's autotuned ones) may sum in a different order from call to
    call, so two identical runs differ in the last bits and then drift apart: a rerun or a resumed
    run would not repeat the uninterrupted one. Their deterministic modes cost ~1.0-1.3x on the CPU
    convolutions measured here. The previous settings are restored on exit.
    """
    if not deterministic:
        yield
        return
    backends = torch.backends
    saved = (backends.mkldnn.deterministic, backends.cudnn.deterministic, backends.cudnn.benchmark)
    backends.mkldnn.deterministic, backends.cudnn.deterministic, backends.cudnn.benchmark = True, True, False
    try:
        yield
    finally:
        backends.mkldnn.deterministic, backends.cudnn.deterministic, backends.cudnn.benchmark = saved

