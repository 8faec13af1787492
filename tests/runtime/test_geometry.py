"""Crop and resize, pixel by pixel: which source pixels the model sees and how they are resampled.

Expected images are built independently: a black canvas the size of the crop box with the frame
pasted at its offset (the ROI-past-the-border rule), then ``cv2.resize`` with the interpolation the
contract names for that case (INTER_AREA when both sides shrink or stay, INTER_LINEAR otherwise).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgereg.errors import ShapeError
from edgereg.preprocess import CropBox, PreprocessConfig, check_frame, crop_box, crop_resize, prepare_frames


def textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 BGR noise: every resampling rule gives a different result on it."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def canvas_crop(image: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """The (h, w, 3) square at (x0, y0) of ``image`` on a black canvas (pixels outside the frame are 0)."""
    out = np.zeros((h, w, 3), np.uint8)
    height, width = image.shape[:2]
    ys, xs = slice(max(0, y0), min(height, y0 + h)), slice(max(0, x0), min(width, x0 + w))
    out[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0] = image[ys, xs]
    return out


ROI_CASES = {
    # name: (roi (cx, cy, r) in a 40 x 50 frame, expected box (x0, y0, side))
    "inside": ((25.0, 20.0, 8.0), (17, 12, 16)),
    "past_left": ((4.0, 20.0, 10.0), (-6, 10, 20)),
    "past_top": ((25.0, 3.0, 10.0), (15, -7, 20)),
    "past_right": ((46.0, 20.0, 10.0), (36, 10, 20)),
    "past_bottom": ((25.0, 36.0, 10.0), (15, 26, 20)),
    "past_top_left": ((3.0, 4.0, 10.0), (-7, -6, 20)),
    "past_bottom_right": ((45.0, 36.0, 10.0), (35, 26, 20)),
    "larger_than_frame": ((25.0, 20.0, 40.0), (-15, -20, 80)),
    "touching_edges": ((10.0, 10.0, 10.0), (0, 0, 20)),
}


@pytest.mark.parametrize("case", list(ROI_CASES))
def test_roi_crop_pads_with_black_and_resizes(case):
    roi, (x0, y0, side) = ROI_CASES[case]
    frame = textured(40, 50)
    config = PreprocessConfig(input_size=(16, 16), roi=roi)
    out, box = crop_resize(frame, config)
    assert box == CropBox(float(x0), float(y0), float(side), float(side))
    expected = canvas_crop(frame, x0, y0, side, side)
    if side != 16:  # shrinking: INTER_AREA
        expected = cv2.resize(expected, (16, 16), interpolation=cv2.INTER_AREA)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)


def test_roi_crop_at_input_size_is_the_exact_pixels():
    frame = textured(40, 50, seed=1)
    out, box = crop_resize(frame, PreprocessConfig(input_size=(16, 16), roi=(25.0, 20.0, 8.0)))
    np.testing.assert_array_equal(out, frame[12:28, 17:33])
    assert out.flags.c_contiguous


def test_roi_box_rounds_the_centre_and_the_side():
    config = PreprocessConfig(input_size=(16, 16), roi=(10.6, 7.4, 4.3))
    assert crop_box(30, 30, config) == CropBox(6.0, 3.0, 9.0, 9.0)  # round(6.3), round(3.1), round(8.6)
    tiny = PreprocessConfig(input_size=(16, 16), roi=(10.0, 10.0, 0.2))
    assert crop_box(30, 30, tiny).w == 1.0  # at least one pixel


@pytest.mark.parametrize("height, width, box", [(40, 50, (5, 0, 40)), (50, 40, (0, 5, 40)), (41, 50, (4, 0, 41)),
                                                (50, 43, (0, 3, 43)), (32, 32, (0, 0, 32))])
def test_center_crop_is_the_largest_centred_square(height, width, box):
    frame = textured(height, width, seed=2)
    config = PreprocessConfig(input_size=(16, 16), crop="center")
    out, got = crop_resize(frame, config)
    x0, y0, side = box
    assert got == CropBox(float(x0), float(y0), float(side), float(side))
    np.testing.assert_array_equal(out, cv2.resize(frame[y0:y0 + side, x0:x0 + side], (16, 16),
                                                  interpolation=cv2.INTER_AREA))


def test_enlarging_uses_linear_and_shrinking_uses_area():
    small, large = textured(10, 10, seed=3), textured(30, 30, seed=4)
    config = PreprocessConfig(input_size=(16, 16), crop="none")
    up, _ = crop_resize(small, config)
    down, _ = crop_resize(large, config)
    np.testing.assert_array_equal(up, cv2.resize(small, (16, 16), interpolation=cv2.INTER_LINEAR))
    np.testing.assert_array_equal(down, cv2.resize(large, (16, 16), interpolation=cv2.INTER_AREA))
    # the rules really differ on these images
    assert not np.array_equal(up, cv2.resize(small, (16, 16), interpolation=cv2.INTER_AREA))
    assert not np.array_equal(down, cv2.resize(large, (16, 16), interpolation=cv2.INTER_LINEAR))


@pytest.mark.parametrize("frame_hw, input_hw, interpolation", [
    ((16, 20), (16, 12), cv2.INTER_AREA),  # height kept, width shrinks: shrinking
    ((20, 16), (12, 16), cv2.INTER_AREA),  # width kept, height shrinks: shrinking
    ((16, 20), (16, 24), cv2.INTER_LINEAR),  # height kept, width grows: enlarging
    ((20, 10), (12, 16), cv2.INTER_LINEAR),  # one side shrinks, the other grows: not shrinking
    ((10, 20), (16, 12), cv2.INTER_LINEAR),
])
def test_whole_frame_resize_picks_area_only_when_no_side_grows(frame_hw, input_hw, interpolation):
    frame = textured(*frame_hw, seed=5)
    out, box = crop_resize(frame, PreprocessConfig(input_size=input_hw, crop="none"))
    assert box == CropBox(0.0, 0.0, float(frame_hw[1]), float(frame_hw[0]))
    assert out.shape == (*input_hw, 3)
    np.testing.assert_array_equal(out, cv2.resize(frame, input_hw[::-1], interpolation=interpolation))


def test_frame_already_at_input_size_is_returned_unchanged():
    frame = textured(12, 16, seed=6)
    out, _ = crop_resize(frame, PreprocessConfig(input_size=(12, 16), crop="none"))
    np.testing.assert_array_equal(out, frame)


def test_crop_box_maps_normalized_coords_to_pixel_centres_and_back():
    box = CropBox(10.0, 20.0, 40.0, 30.0)
    uv = np.array([[0.0, 0.0], [0.5, 0.5], [1.0, 1.0], [0.25, 0.1]])
    xy = box.to_source(uv)
    np.testing.assert_allclose(xy, [[9.5, 19.5], [29.5, 34.5], [49.5, 49.5], [19.5, 22.5]])
    np.testing.assert_allclose(box.to_normalized(xy), uv)
    assert xy.dtype == np.float64 and box.to_source([[1, 0]]).tolist() == [[49.5, 19.5]]  # ints are fine
    np.testing.assert_allclose(box.to_normalized(np.array([[29, 34]])), [[19.5 / 40, 14.5 / 30]], rtol=1e-15)
    assert box.as_array().tolist() == [10.0, 20.0, 40.0, 30.0] and box.as_array().dtype == np.float64


def test_rows_of_coords_map_through_their_own_crop_boxes():
    from edgereg.preprocess.geometry import uv_to_source_pixels

    uv = np.array([[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.25, 0.1]])  # (N, 2K): two points per row
    boxes = np.array([[0.0, 0.0, 200.0, 100.0], [10.0, 20.0, 40.0, 30.0]])  # (N, 4) x0, y0, w, h
    pixels = uv_to_source_pixels(uv, boxes)
    np.testing.assert_allclose(pixels, [[-0.5, -0.5, 199.5, 99.5], [29.5, 34.5, 19.5, 22.5]])
    assert pixels[1, 2:].tolist() == CropBox(10.0, 20.0, 40.0, 30.0).to_source([0.25, 0.1]).tolist()
    with pytest.raises(ShapeError, match=r"expected uv \(N, 2K\) and crop_boxes \(N, 4\), got \(2, 4\) and \(1, 4\)"):
        uv_to_source_pixels(uv, boxes[:1])


def test_gray_frames_are_promoted_and_bad_frames_name_the_problem():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(check_frame(gray), np.repeat(gray[..., None], 3, axis=2))
    one_row = np.arange(4, dtype=np.uint8).reshape(1, 4)
    assert check_frame(one_row).shape == (1, 4, 3)
    frame = textured(3, 4)
    assert check_frame(frame) is frame
    cases = [
        ([[1, 2]], r"^expected a numpy array \(H, W, 3\) uint8 BGR, got list from frame$"),
        (np.zeros((3, 4), np.float32), r"^expected \(H, W, 3\) uint8 BGR, got \(3, 4\) float32 from frame$"),
        (np.zeros((0, 4), np.uint8), r"got \(0, 4\) uint8"),
        (np.zeros((3, 4, 4), np.uint8), r"got \(3, 4, 4\) uint8"),
        (np.zeros((0, 4, 3), np.uint8), r"got \(0, 4, 3\) uint8"),
        (np.zeros((3, 0, 3), np.uint8), r"got \(3, 0, 3\) uint8"),
        (np.zeros((2, 3, 4, 3), np.uint8), r"got \(2, 3, 4, 3\) uint8"),
        (np.zeros((3, 4, 3), np.uint16), r"got \(3, 4, 3\) uint16"),
    ]
    for bad, message in cases:
        with pytest.raises(ShapeError, match=message):
            check_frame(bad)
    with pytest.raises(ShapeError, match=r"from cam0$"):
        check_frame(np.zeros((3, 4, 2), np.uint8), source="cam0")


def test_prepare_frames_takes_a_list_of_any_sizes_or_a_batch_array():
    config = PreprocessConfig(input_size=(8, 8), crop="center")
    frames = [textured(20, 30, seed=7), textured(8, 8, seed=8), textured(9, 12, seed=9)]
    batch, boxes = prepare_frames(frames, config)
    assert batch.shape == (3, 8, 8, 3) and batch.dtype == np.uint8
    for frame, row, box in zip(frames, batch, boxes):
        expected, expected_box = crop_resize(frame, config)
        np.testing.assert_array_equal(row, expected)
        assert box == expected_box
    stacked = np.stack([textured(10, 10, seed=s) for s in range(2)])  # (B, H, W, 3)
    batch, boxes = prepare_frames(stacked, config)
    np.testing.assert_array_equal(batch[1], crop_resize(stacked[1], config)[0])
    assert len(boxes) == 2
