"""How decoding turns gray and 16-bit files into the runtime's (H, W, 3) uint8 BGR.

OpenCV's IMREAD_COLOR keeps the high byte of a 16-bit sample (``v >> 8``, i.e. v / 256 rounded
down), not ``round(v / 257)`` and not a clip to 255, and copies a gray sample into B, G and R.
A camera that writes 16-bit PNGs therefore reads as the 8-bit image its upper bits describe.
"""

from __future__ import annotations

import cv2
import numpy as np

from edgereg.preprocess import decode_image, read_image

# samples that tell the candidate rules apart: >> 8 gives 0, 0, 1, 1, 3, 127, 128, 255, 255
SAMPLES = np.array([0, 255, 256, 511, 1000, 32767, 32768, 65280, 65535], dtype=np.uint16)


def test_16bit_gray_keeps_the_high_byte_in_all_three_channels(tmp_path):
    gray16 = np.resize(SAMPLES, (6, 9)).astype(np.uint16)
    path = tmp_path / "g16.png"
    assert cv2.imwrite(str(path), gray16)
    image = read_image(path)
    assert image.shape == (6, 9, 3) and image.dtype == np.uint8
    expected = (gray16 >> 8).astype(np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], expected)
    assert image[0, :9, 0].tolist() == [0, 0, 1, 1, 3, 127, 128, 255, 255]


def test_16bit_colour_keeps_the_high_byte_and_the_channel_order(tmp_path):
    bgr16 = np.stack([np.resize(SAMPLES, (4, 5)), np.resize(SAMPLES[::-1], (4, 5)),
                      np.full((4, 5), 40000)], axis=-1).astype(np.uint16)  # B, G, R planes differ
    ok, encoded = cv2.imencode(".png", bgr16)
    assert ok
    image = decode_image(encoded.tobytes(), source="c16.png")
    np.testing.assert_array_equal(image, (bgr16 >> 8).astype(np.uint8))
    assert image[0, 0].tolist() == [0, 255, 156]  # 40000 >> 8 = 156 in R


def test_8bit_gray_is_copied_into_b_g_and_r(tmp_path):
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    path = tmp_path / "g8.png"
    assert cv2.imwrite(str(path), gray)
    image = read_image(path)
    np.testing.assert_array_equal(image, np.repeat(gray[..., None], 3, axis=2))
