"""Every transform of a point agrees with OpenCV's own warp of an image (docs/coordinates.md).

A small Gaussian blob is drawn at a sub-pixel position; the transformed label must land on the
centroid of the blob in the transformed image.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from edgereg.core.reduce import unmap_coords
from edgereg.core.tta import parse_tta
from edgereg.preprocess import PreprocessConfig, crop_resize
from edgereg.training.fitting.augment import AugmentConfig, _move_targets, _warp, augment_batch
from edgereg.training.fitting.warp import forward_matrices

TOLERANCE = 0.02  # px: the blob's centroid is exact up to its truncation at the border


def blob(height: int, width: int, x: float, y: float, sigma: float = 1.6) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))


def centroid(image: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    total = image.sum()
    return np.array([(image * xx).sum() / total, (image * yy).sum() / total])


def opencv_matrix(angle: float, flip: bool, shift, height: int, width: int) -> np.ndarray:
    """The 2x3 forward map ``p_out = M (p - c) + c + shift`` about the image centre, for cv2."""
    m = forward_matrices(torch.tensor([angle]), torch.tensor([flip]))[0].numpy()
    c = np.array([(width - 1) / 2, (height - 1) / 2])
    return np.hstack([m, (c - m @ c + np.asarray(shift, dtype=np.float64))[:, None]])


@pytest.mark.parametrize("angle, flip, shift", [
    (0.0, True, (0.0, 0.0)), (90.0, False, (0.0, 0.0)), (180.0, False, (0.0, 0.0)), (270.0, True, (0.0, 0.0)),
    (33.0, False, (0.0, 0.0)), (-71.5, True, (2.25, -1.5)), (0.0, False, (3.3, 4.7)),
])
@pytest.mark.parametrize("height, width", [(40, 40), (36, 52)])
def test_augmentation_moves_points_where_opencv_warps_the_image(angle, flip, shift, height, width):
    if angle % 180 and height != width and angle % 90 == 0:
        pytest.skip("a 90-degree turn of a non-square image leaves the frame")
    x, y = 0.43 * width + 0.31, 0.57 * height - 0.22
    image = blob(height, width, x, y)
    expected = centroid(cv2.warpAffine(image, opencv_matrix(angle, flip, shift, height, width), (width, height),
                                       flags=cv2.INTER_LINEAR))
    batch = torch.from_numpy(np.repeat(image[None, None], 3, axis=1)).float()  # (1, 3, H, W)
    angles, flips, shifts = torch.tensor([angle]), torch.tensor([flip]), torch.tensor([shift], dtype=torch.float32)
    warped = _warp(batch, angles, flips, shifts)[0, 0].numpy()
    uv = torch.tensor([[(x + 0.5) / width, (y + 0.5) / height]])
    moved = _move_targets("coords", uv, angles, flips, shifts, (height, width))[0].double().numpy()
    label = moved * np.array([width, height]) - 0.5
    np.testing.assert_allclose(centroid(warped), expected, atol=TOLERANCE)
    np.testing.assert_allclose(label, expected, atol=TOLERANCE)


def test_default_coords_augmentation_translates_only_and_keeps_the_point_inside():
    height = width = 32
    generator = torch.Generator().manual_seed(3)
    rng = np.random.default_rng(0)
    points = rng.uniform(6.0, 25.0, (16, 2))  # blobs whole (and borders blank) before the shift
    images = np.stack([np.repeat(blob(height, width, px, py, sigma=1.0)[None], 3, axis=0) for px, py in points])
    uv = torch.from_numpy((points + 0.5) / width)
    out, moved = augment_batch(torch.from_numpy(images).float() * 200, uv, kind="coords",
                               config=AugmentConfig(translate=0.25), generator=generator)
    labels = moved.double().numpy() * width - 0.5
    assert (moved >= 0.02 - 1e-6).all() and (moved <= 0.98 + 1e-6).all()
    shifted = np.abs(labels - points).max(axis=1)
    assert shifted.max() > 2.0  # it really moves
    for i in range(len(points)):
        if 3 < labels[i].min() and labels[i].max() < width - 4:  # blob fully inside: centroid is exact
            np.testing.assert_allclose(centroid(out[i, 0].double().numpy()), labels[i], atol=0.05)


@pytest.mark.parametrize("source, crop, size", [((100, 150), "none", (64, 64)), ((100, 150), "center", (48, 48)),
                                                ((97, 131), "none", (40, 56)), ((30, 30), "none", (64, 64))])
def test_crop_resize_and_its_box_keep_the_point(source, crop, size):
    height, width = source
    x, y = 0.61 * width + 0.27, 0.43 * height + 0.11
    image = (blob(height, width, x, y, sigma=2.5) * 250).astype(np.uint8)
    config = PreprocessConfig(input_size=size, channels="gray", crop=crop, roi=None, mean=(0.5,), std=(0.25,))
    resized, box = crop_resize(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), config)
    found = centroid(resized[..., 0].astype(np.float64))  # in resized pixels
    uv = (found + 0.5) / np.array([size[1], size[0]])
    # uint8 rounding of a resized blob moves its centroid by a few hundredths of a pixel
    np.testing.assert_allclose(box.to_source(uv), (x, y), atol=0.06 * max(width / size[1], height / size[0]))
    np.testing.assert_allclose(box.to_normalized(np.array([x, y])), uv, atol=0.01)


@pytest.mark.parametrize("spec", ["d4", "rot:6"])
def test_tta_views_unmap_to_the_original_point(spec):
    side = 41
    x, y = 13.3, 24.8
    image = blob(side, side, x, y)
    tta = parse_tta(spec)
    views = []
    c = (side - 1) / 2
    for k, angle in enumerate(tta.angles_deg()):
        flipped = bool(tta.flipped()[k])
        # the view: rotate display-CCW by angle about the centre, then (d4 views 4..7) flip left-right
        rotation = cv2.getRotationMatrix2D((c, c), float(angle), 1.0)
        view = cv2.warpAffine(image, rotation, (side, side), flags=cv2.INTER_LINEAR)
        if flipped:
            view = view[:, ::-1]
        u, v = (centroid(view) + 0.5) / side
        views.append((u, v))
    unmapped = unmap_coords(np.asarray(views)[None], tta)[0] * side - 0.5  # (V, 2) pixels
    np.testing.assert_allclose(unmapped, np.tile([x, y], (len(views), 1)), atol=0.03)
