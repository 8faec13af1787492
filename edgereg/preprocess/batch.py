"""The public entry point of the fused preprocessing: a batch of frames -> the model's input.

numba is imported on the first call that needs it: rotation views, or a call of at least
``small.NUMBA_MIN_VALUES`` output values. Until then the bit-identical numpy twins in
:mod:`edgereg.preprocess.small` do the work, so a process that scores one image, or a folder of a
few thousand, never pays numba's import and CPU-target initialisation (~0.4 s of CPU, more than
the twins cost for ~15,000 64x64 frames). Once numba is loaded, every call uses its kernels.
"""

from __future__ import annotations

import sys

import numpy as np

from edgereg.core.tta import TTASpec, parse_tta
from edgereg.errors import ShapeError, TTAError
from edgereg.preprocess import small
from edgereg.preprocess.config import PreprocessConfig

# Below this many output values per call the serial kernels are used (about 1 MiB of float32): waking
# worker threads costs more than the work (one 64x64 frame: ~0.02 ms serial, several ms in parallel
# on a busy 2-core machine).
PARALLEL_MIN_VALUES = 1 << 18
_KERNELS = "edgereg.preprocess.kernels"  # the numba module: once imported, always used


def preprocess_batch(images: np.ndarray, config: PreprocessConfig, tta: TTASpec | str | None = None,
                     *, out: np.ndarray | None = None, parallel: bool | None = None) -> np.ndarray:
    """Normalize, mask, lay out and expand TTA views of a batch in one numba pass.

    Args:
        images: (B, H, W, 3) uint8, BGR, already cropped and resized to ``config.input_size``.
        config: the preprocessing configuration (channels, mean/std, circle, fill).
        tta: a TTASpec, "none", "d4" or "rot:N".
        out: optional preallocated (B * V, C, H, W) float32, C-contiguous.
        parallel: spread the batch over numba's threads (True), run on the calling thread
            (False), or decide by size (None: parallel from about 1 MiB of output). Callers that
            already keep every core busy (decoder threads, ONNX Runtime) should pass False.

    Returns:
        (B * V, C, H, W) float32; the V views of image b are rows b*V .. b*V + V - 1.

    Raises:
        ShapeError: wrong input or output shape/dtype.
        TTAError: D4 views of a non-square input.
    """
    spec = tta if isinstance(tta, TTASpec) else parse_tta(tta)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        got = f"{images.shape} {images.dtype}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ShapeError(f"expected images (B, H, W, 3) uint8 BGR, got {got}")
    n, height, width, _ = images.shape
    if (height, width) != tuple(config.input_size):
        raise ShapeError(f"expected frames of {tuple(config.input_size)} (H, W) after crop_resize, "
                         f"got {(height, width)}; call edgereg.preprocess.crop_resize first")
    if spec.mode == "d4" and height != width:
        raise TTAError(f"D4 TTA needs a square model input, got {height}x{width}; use --tta rot:N or none")
    shape = (n * spec.n, config.n_channels, height, width)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ShapeError(f"expected out {shape} float32 C-contiguous, got {out.shape} {out.dtype}")
    images = np.ascontiguousarray(images)
    scale, offset = config.affine()
    gray = config.channels == "gray"
    if spec.mode != "rot" and out.size < small.NUMBA_MIN_VALUES and _KERNELS not in sys.modules:
        twin = small.d4 if spec.mode == "d4" else small.identity
        twin(images, scale, offset, float(config.fill), _mask(height, width) if config.circle else None, gray, out)
        return out
    from edgereg.preprocess import kernels  # numba: imported by the first call that needs it

    size = out.size if parallel is None else (PARALLEL_MIN_VALUES if parallel else 0)
    if spec.mode == "rot":
        kernel = kernels.pick(kernels.fused_rotations, kernels.fused_rotations_serial, size, PARALLEL_MIN_VALUES)
        kernel(images, np.deg2rad(spec.angles_deg()), scale, offset, float(config.fill), gray, out)
    elif spec.mode == "d4":
        kernel = kernels.pick(kernels.fused_d4, kernels.fused_d4_serial, size, PARALLEL_MIN_VALUES)
        kernel(images, scale, offset, float(config.fill), config.circle, gray, out)
    else:
        kernel = kernels.pick(kernels.fused_identity, kernels.fused_identity_serial, size, PARALLEL_MIN_VALUES)
        kernel(images, scale, offset, float(config.fill), config.circle, gray, out)
    return out


_MASKS: dict[tuple[int, int], np.ndarray] = {}


def _mask(height: int, width: int) -> np.ndarray:
    """The circle mask of an (H, W) input, computed once per size (read-only)."""
    mask = _MASKS.get((height, width))
    if mask is None:
        mask = small.circle_mask(height, width)
        mask.setflags(write=False)
        _MASKS[(height, width)] = mask
    return mask
