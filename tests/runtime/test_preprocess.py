"""The fused numba kernels against the numpy reference, and crop/resize/decoding behaviour."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgereg.errors import DecodeError, ShapeError, TTAError
from edgereg.preprocess import PreprocessConfig, crop_resize, decode_image, preprocess_batch, read_image, read_images
from edgereg.preprocess.reference import circle_mask, d4_view, preprocess_batch_ref


def config_for(size, channels, crop, fill=0.0):
    n = 3 if channels == "rgb" else 1
    return PreprocessConfig(input_size=size, channels=channels, crop=crop,
                            mean=tuple(np.linspace(0.3, 0.6, n)), std=tuple(np.linspace(0.2, 0.3, n)),
                            fill=fill)


@pytest.mark.parametrize("channels", ["rgb", "gray"])
@pytest.mark.parametrize("crop", ["none", "center", "circle"])
@pytest.mark.parametrize("tta", ["none", "d4", "rot:3", "rot:8"])
@pytest.mark.parametrize("size", [(8, 8), (17, 17), (32, 32)])
@pytest.mark.parametrize("parallel", [False, True])
def test_kernel_matches_reference(rng, channels, crop, tta, size, parallel):
    config = config_for(size, channels, crop, fill=-2.0)
    images = rng.integers(0, 256, (3, *size, 3), dtype=np.uint8)
    got = preprocess_batch(images, config, tta, parallel=parallel)
    want = preprocess_batch_ref(images, config, tta)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(9, 13), (20, 7)])
def test_kernel_matches_reference_on_non_square(rng, size):
    for channels in ("rgb", "gray"):
        config = config_for(size, channels, "circle")
        images = rng.integers(0, 256, (2, *size, 3), dtype=np.uint8)
        np.testing.assert_allclose(preprocess_batch(images, config, "rot:4"),
                                   preprocess_batch_ref(images, config, "rot:4"), atol=1e-5)
        np.testing.assert_allclose(preprocess_batch(images, config),
                                   preprocess_batch_ref(images, config), atol=1e-5)


def test_reference_itself_is_what_the_docs_say(rng):
    """Independent spot checks of the reference: RGB order, normalization, mask, D4 order."""
    config = PreprocessConfig(input_size=(4, 4), channels="rgb", crop="circle",
                              mean=(0.0, 0.5, 1.0), std=(1.0, 0.5, 0.25), fill=9.0)
    image = rng.integers(0, 256, (1, 4, 4, 3), dtype=np.uint8)
    out = preprocess_batch_ref(image, config)
    b, g, r = image[0, 1, 2].astype(np.float64) / 255
    np.testing.assert_allclose(out[0, :, 1, 2], [r, (g - 0.5) / 0.5, (b - 1.0) / 0.25], rtol=1e-6)
    assert out[0, 0, 0, 0] == 9.0  # a corner is outside the circle
    assert circle_mask(4, 4).sum() == 12
    marker = np.zeros((4, 4), dtype=int)
    marker[0, 3] = 1  # top-right
    assert d4_view(marker, 1)[0, 0] == 1  # display-CCW: top-right goes to top-left
    assert d4_view(marker, 4)[0, 0] == 1  # flip: top-right goes to top-left


def test_automatic_parallel_choice_on_a_large_batch_matches_reference(rng):
    config = config_for((48, 48), "rgb", "circle")
    images = rng.integers(0, 256, (40, 48, 48, 3), dtype=np.uint8)  # above the parallel threshold
    for tta in ("none", "d4", "rot:2"):
        np.testing.assert_allclose(preprocess_batch(images, config, tta),
                                   preprocess_batch_ref(images, config, tta), atol=1e-5)


def test_rot_views_at_right_angles_equal_d4_views(rng):
    config = config_for((15, 15), "rgb", "circle")
    images = rng.integers(0, 256, (2, 15, 15, 3), dtype=np.uint8)
    rot = preprocess_batch(images, config, "rot:4")
    d4 = preprocess_batch(images, config, "d4").reshape(2, 8, 3, 15, 15)[:, :4]  # (B*8,..) -> (B,8,..)
    np.testing.assert_allclose(rot.reshape(2, 4, 3, 15, 15), d4, atol=1e-5)


def test_rejects_bad_shapes_and_d4_on_non_square(rng):
    config = config_for((8, 8), "rgb", "none")
    with pytest.raises(ShapeError, match="uint8"):
        preprocess_batch(np.zeros((1, 8, 8, 3), np.float32), config)
    with pytest.raises(ShapeError, match="crop_resize"):
        preprocess_batch(np.zeros((1, 9, 8, 3), np.uint8), config)
    with pytest.raises(TTAError, match="square"):
        preprocess_batch(np.zeros((1, 8, 6, 3), np.uint8), config_for((8, 6), "rgb", "none"), "d4")


def test_crop_resize_center_roi_and_padding():
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[:, 50:150] = 255  # the centre square is all white
    out, box = crop_resize(frame, config_for((10, 10), "rgb", "center"))
    assert (box.x0, box.y0, box.w, box.h) == (50, 0, 100, 100)
    assert out.shape == (10, 10, 3) and out.min() == 255
    out, box = crop_resize(frame, config_for((20, 40), "rgb", "none"))
    assert out.shape == (20, 40, 3) and (box.w, box.h) == (200, 100)
    roi = PreprocessConfig(input_size=(8, 8), crop="circle", roi=(10.0, 10.0, 20.0))
    out, box = crop_resize(frame, roi)  # the ROI reaches past the top-left: padded black
    assert (box.x0, box.y0, box.w) == (-10, -10, 40) and out.shape == (8, 8, 3)
    np.testing.assert_allclose(box.to_source(box.to_normalized(np.array([3.0, 7.0]))), [3.0, 7.0])


def test_decode_errors_name_file_and_reason(tmp_path):
    good = tmp_path / "ok é.png"  # a non-ASCII path
    cv2.imencode(".png", np.full((5, 6, 3), 7, np.uint8))[1].tofile(str(good))
    assert read_image(good).shape == (5, 6, 3)
    jpg = cv2.imencode(".jpg", np.full((32, 32, 3), 100, np.uint8))[1].tobytes()
    cases = {"empty.jpg": b"", "text.png": b"hello", "trunc.jpg": jpg[: len(jpg) // 2]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(DecodeError, match="0 bytes"):
        read_image(tmp_path / "empty.jpg")
    with pytest.raises(DecodeError, match="not a decodable"):
        read_image(tmp_path / "text.png")
    with pytest.raises(DecodeError, match="truncated"):
        read_image(tmp_path / "trunc.jpg")
    with pytest.raises(DecodeError, match="not found"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(DecodeError, match="decodable"):
        decode_image(b"\x00" * 10, source="x")
    paths = [good, tmp_path / "text.png", good, tmp_path / "missing.png"] * 5
    results = list(read_images(paths, threads=2))
    assert [i for i, _ in results] == list(range(20))
    assert [isinstance(r, DecodeError) for _, r in results] == [False, True, False, True] * 5


def test_gray_and_16bit_inputs_become_bgr(tmp_path):
    gray16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    path = tmp_path / "g16.png"
    cv2.imwrite(str(path), gray16)
    image = read_image(path)
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8


@pytest.mark.parametrize("channels", ["rgb", "gray"])
@pytest.mark.parametrize("crop", ["none", "circle"])
@pytest.mark.parametrize("size", [(8, 8), (17, 17), (31, 30), (64, 64)])
def test_numpy_twins_of_small_calls_equal_the_numba_kernels_bit_for_bit(rng, channels, crop, size):
    from edgereg.preprocess import kernels

    config = config_for(size, channels, crop, fill=-1.5)
    images = rng.integers(0, 256, (2, *size, 3), dtype=np.uint8)
    scale, offset = config.affine()
    gray = channels == "gray"
    modes = [("none", 1, kernels.fused_identity_serial, kernels.fused_identity)]
    if size[0] == size[1]:
        modes.append(("d4", 8, kernels.fused_d4_serial, kernels.fused_d4))
    for tta, views, serial, parallel in modes:
        for kernel in (serial, parallel):
            want = np.empty((2 * views, config.n_channels, *size), np.float32)
            kernel(images, scale, offset, -1.5, config.circle, gray, want)
            got = preprocess_batch(images, config, tta)  # 2 images: small enough for the numpy twin
            assert np.array_equal(got, want), (tta, kernel)


def test_numba_is_loaded_only_by_calls_that_need_it():
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from edgereg.core.predictor import Predictor\n"
            "from edgereg.preprocess import PreprocessConfig, preprocess_batch\n"
            "from edgereg.preprocess.reference import preprocess_batch_ref\n"
            "config = PreprocessConfig(input_size=(64, 64), crop='circle')\n"
            "images = np.random.default_rng(0).integers(0, 256, (32, 64, 64, 3), dtype=np.uint8)\n"
            "preprocess_batch(images[:1], config, 'd4')\n"
            "twin = preprocess_batch(images, config)  # a folder-scoring batch\n"
            "assert 'numba' not in sys.modules, 'numba was imported'\n"
            "preprocess_batch(images[:1], config, 'rot:4')\n"
            "assert 'numba' in sys.modules\n"
            "assert np.array_equal(preprocess_batch(images, config), twin)  # now numba's kernel\n"
            "big = np.zeros((344, 64, 64, 3), np.uint8)  # 344 x 3 x 64 x 64 > NUMBA_MIN_VALUES\n"
            "np.testing.assert_allclose(preprocess_batch(big, config)[:2], preprocess_batch_ref(big[:2], config),"
            " atol=1e-5)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _jpeg(path, height, width, seed=0):
    image = cv2.GaussianBlur(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8),
                             (0, 0), 2)
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return path


@pytest.mark.parametrize("height, width, crop, size, factor", [
    (480, 640, "center", (64, 64), 4),    # crop 480 >= 4 x 64 but < 8 x 64
    (480, 640, "none", (64, 64), 4),
    (130, 130, "center", (64, 64), 2),    # 2.03 x: the smallest crop that is reduced
    (120, 160, "center", (64, 64), 1),    # < 2 x: full decode
    (600, 600, "center", (32, 32), 8),
])
def test_reduced_decode_picks_the_largest_factor_that_keeps_the_input_size(tmp_path, height, width, crop, size,
                                                                            factor):
    from edgereg.preprocess import read_frame
    from edgereg.preprocess.frames import REDUCED_FLAGS, jpeg_size

    path = _jpeg(tmp_path / "a.jpg", height, width)
    data = path.read_bytes()
    assert jpeg_size(data) == (height, width)
    config = PreprocessConfig(input_size=size, crop=crop, decode="reduced")
    frame, box = read_frame(path, config)
    assert frame.shape == (*size, 3) and frame.dtype == np.uint8
    full_box = crop_resize(read_image(path), config)[1]
    if factor == 1:
        np.testing.assert_array_equal(frame, crop_resize(read_image(path), config)[0])
        assert box == full_box
        return
    reduced = cv2.imdecode(np.frombuffer(data, np.uint8), REDUCED_FLAGS[factor])
    assert reduced.shape[:2] == (-(-height // factor), -(-width // factor))
    x0, y0, w, h = (int(v / factor) for v in (box.x0, box.y0, box.w, box.h))
    want = cv2.resize(reduced[y0:y0 + h, x0:x0 + w], size[::-1], interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(frame, want)
    assert abs(box.x0 - full_box.x0) < factor and abs(box.w - full_box.w) < factor, "same region, in source pixels"
    full = crop_resize(read_image(path), config)[0]
    assert np.abs(frame.astype(int) - full).mean() < 3.0


def test_reduced_policy_leaves_png_and_the_full_policy_alone(tmp_path):
    from edgereg.preprocess import read_frame

    png = tmp_path / "a.png"
    cv2.imwrite(str(png), np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8))
    jpg = _jpeg(tmp_path / "a.jpg", 300, 300)
    for path, policy in ((png, "reduced"), (jpg, "full")):
        config = PreprocessConfig(input_size=(32, 32), crop="center", decode=policy)
        frame, box = read_frame(path, config)
        want, want_box = crop_resize(read_image(path), config)
        np.testing.assert_array_equal(frame, want)
        assert box == want_box


def test_jpeg_size_reads_only_the_header_and_refuses_non_jpegs():
    from edgereg.preprocess.frames import jpeg_size

    ok, data = cv2.imencode(".jpg", np.zeros((37, 53, 3), np.uint8))
    assert jpeg_size(data.tobytes()) == (37, 53)
    assert jpeg_size(data.tobytes()[:20]) is None
    assert jpeg_size(b"\x89PNG\r\n\x1a\n....") is None
    assert jpeg_size(b"") is None
