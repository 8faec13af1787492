"""The preprocessing configuration and ``preprocess_batch``'s contract: validation, the card's
fields, the affine in float32, the ``out`` buffer and the parallel/serial choice."""

from __future__ import annotations

import numpy as np
import pytest

from edgereg.core.card import ModelCard
from edgereg.errors import CardError, ShapeError
from edgereg.preprocess import PreprocessConfig, kernels, preprocess_batch
from edgereg.preprocess.batch import PARALLEL_MIN_VALUES
from edgereg.preprocess.reference import preprocess_batch_ref


def test_config_from_card_carries_every_preprocessing_field():
    card = ModelCard(kind="scalar", targets=("c",), input_size=(24, 32), channels="gray", crop="circle",
                     roi=(40.0, 30.0, 12.5), mean=(0.3,), std=(0.2,), fill=-1.5)
    config = PreprocessConfig.from_card(card)
    assert config == PreprocessConfig(input_size=(24, 32), channels="gray", crop="circle", roi=(40.0, 30.0, 12.5),
                                      mean=(0.3,), std=(0.2,), fill=-1.5)
    assert isinstance(config.fill, float) and isinstance(config.input_size, tuple)
    assert config.n_channels == 1 and config.circle
    rgb = PreprocessConfig.from_card(ModelCard(kind="scalar", targets=("c",), input_size=(8, 8), crop="none"))
    assert rgb.n_channels == 3 and not rgb.circle and rgb.roi is None


@pytest.mark.parametrize("fields, message", [
    (dict(channels="bgr"), r"^field 'channels' is 'bgr'; expected 'rgb' or 'gray'$"),
    (dict(crop="square"), r"^field 'crop' is 'square'; expected one of none, center, circle$"),
    (dict(crop="centre"),
     r"^field 'crop' is 'centre' \(did you mean 'center'\?\); expected one of none, center, circle$"),
    (dict(decode="fast"), r"^field 'decode' is 'fast'; expected one of full, reduced$"),
    (dict(mean=(0.5, 0.5)), r"^field 'mean' must be 3 numbers for channels 'rgb', got \(0.5, 0.5\)$"),
    (dict(std=(0.5, 0.5)), r"^field 'std' must be 3 positive numbers for channels 'rgb', got \(0.5, 0.5\)$"),
    (dict(std=(0.5, 0.0, 0.5)), r"3 positive numbers"),
    (dict(std=(0.5, -0.1, 0.5)), r"3 positive numbers"),
    (dict(channels="gray"), r"^field 'mean' must be 1 numbers for channels 'gray'"),
    (dict(roi=(1.0, 2.0, 0.0)), r"^field 'roi' must be \[cx, cy, r\] with r > 0, or null, got \(1.0, 2.0, 0.0\)$"),
    (dict(fill=float("nan")), r"^field 'fill' must be a finite number, got nan$"),
])
def test_config_rejects_inconsistent_fields(fields, message):
    with pytest.raises(CardError, match=message):
        PreprocessConfig(**fields)


def test_affine_is_float32_and_equals_the_normalization():
    config = PreprocessConfig(mean=(0.25, 0.5, 0.75), std=(0.5, 0.25, 0.125))
    scale, offset = config.affine()
    assert scale.dtype == np.float32 and offset.dtype == np.float32
    np.testing.assert_array_equal(scale, np.float32([1 / 127.5, 1 / 63.75, 1 / 31.875]))
    np.testing.assert_array_equal(offset, np.float32([-0.5, -2.0, -6.0]))
    pixel = np.array([0.0, 51.0, 255.0])
    np.testing.assert_allclose(pixel * scale + offset, (pixel / 255 - np.array(config.mean)) / np.array(config.std),
                               rtol=1e-6)


def test_reference_returns_float32_like_the_kernel(rng):
    config = PreprocessConfig(input_size=(8, 8))
    images = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    assert preprocess_batch_ref(images, config, "d4").dtype == np.float32


def test_bad_batches_and_out_buffers_are_shape_errors(rng):
    config = PreprocessConfig(input_size=(8, 8))
    good = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    with pytest.raises(ShapeError, match=r"^expected images \(B, H, W, 3\) uint8 BGR, got list$"):
        preprocess_batch([good[0]], config)
    with pytest.raises(ShapeError, match=r"got \(2, 8, 8, 4\) uint8$"):
        preprocess_batch(np.zeros((2, 8, 8, 4), np.uint8), config)
    with pytest.raises(ShapeError, match=r"got \(8, 8, 3\) uint8$"):
        preprocess_batch(good[0], config)
    with pytest.raises(ShapeError, match=r"got \(2, 8, 8, 3\) float32$"):
        preprocess_batch(good.astype(np.float32), config)
    with pytest.raises(ShapeError, match=r"^expected frames of \(8, 8\) \(H, W\) after crop_resize, got \(8, 9\)"):
        preprocess_batch(np.zeros((1, 8, 9, 3), np.uint8), config)
    shape = (16, 3, 8, 8)  # 2 images x 8 views
    for bad in (np.empty((15, 3, 8, 8), np.float32), np.empty(shape, np.float64),
                np.empty((16, 3, 8, 16), np.float32)[..., ::2]):
        with pytest.raises(ShapeError, match=r"^expected out \(16, 3, 8, 8\) float32 C-contiguous, got "):
            preprocess_batch(good, config, "d4", out=bad)
    out = np.full(shape, np.nan, np.float32)
    result = preprocess_batch(good, config, "d4", out=out)
    assert result is out
    np.testing.assert_allclose(out, preprocess_batch_ref(good, config, "d4"), atol=1e-5)


def test_parallel_flag_chooses_the_kernel_by_the_documented_rule(rng, monkeypatch):
    """None: by output size (parallel from PARALLEL_MIN_VALUES values); True/False: forced.

    (numba's kernels are imported by this module, so every call below goes through them.)
    """
    seen = []
    original = kernels.pick

    def spy(parallel_kernel, serial_kernel, out_values, parallel_min_values):
        assert parallel_min_values == PARALLEL_MIN_VALUES
        chosen = original(parallel_kernel, serial_kernel, out_values, parallel_min_values)
        seen.append(chosen is parallel_kernel)
        return chosen

    monkeypatch.setattr(kernels, "pick", spy)
    config = PreprocessConfig(input_size=(8, 8))
    small = rng.integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
    for tta in ("none", "d4", "rot:3"):
        seen.clear()
        for parallel in (None, True, False):
            preprocess_batch(small, config, tta, parallel=parallel)
        assert seen == [False, True, False], tta
    big = np.zeros((PARALLEL_MIN_VALUES // (3 * 64) + 1, 8, 8, 3), np.uint8)  # just above the threshold
    seen.clear()
    preprocess_batch(big, config, parallel=None)
    preprocess_batch(big, config, parallel=False)
    assert seen == [True, False]
    assert original("p", "s", 100, 100) == "p"
    assert original("p", "s", 99, 100) == "s"
