"""Fuzz: image bytes (random, truncated and mutated PNG / JPEG / PGM / BMP / WebP headers) through
decoding, reading from a file, and crop/resize."""

from __future__ import annotations

import struct

import cv2
import numpy as np
from fuzz_helpers import assert_one_line, bounded, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from edgereg.errors import EdgeregError
from edgereg.preprocess import PreprocessConfig, crop_resize, decode_image, read_image

CONFIG = PreprocessConfig(input_size=(16, 16), crop="circle")


def _encoded(ext: str, shape) -> bytes:
    image = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


SEEDS = [_encoded(ext, shape) for ext, shape in (
    (".png", (7, 9, 3)), (".png", (5, 4)), (".jpg", (16, 12, 3)), (".pgm", (6, 5)), (".ppm", (3, 8, 3)),
    (".bmp", (4, 4, 3)), (".webp", (8, 8, 3)), (".tiff", (4, 6, 3)),
)] + [b"P5\n30000 30000\n255\n" + b"\0" * 64, b"P2\n# c\n3 2\n255\n1 2 3\n4 5 6\n"]


@st.composite
def hostile_bytes(draw) -> bytes:
    """Random bytes, or a real encoding truncated, with bytes overwritten, or with its size fields forged."""
    kind = draw(st.sampled_from(["random", "truncated", "mutated", "forged", "seed"]))
    if kind == "random":
        return draw(st.binary(max_size=2048))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    if kind == "truncated":
        return bytes(data[:draw(st.integers(0, len(data)))])
    if kind == "mutated":
        for _ in range(draw(st.integers(1, 8))):
            position = draw(st.integers(0, min(len(data), 64) - 1))
            data[position] = draw(st.integers(0, 255))
        return bytes(data)
    if kind == "forged":  # the places where PNG, BMP and JPEG keep their sizes
        width, height = draw(st.integers(0, 2 ** 31 - 1)), draw(st.integers(0, 2 ** 31 - 1))
        if data[:4] == b"\x89PNG":
            data[16:24] = struct.pack(">II", width, height)
        elif data[:2] == b"BM":
            data[18:26] = struct.pack("<ii", width, -height)
        elif data[:2] == b"\xff\xd8" and b"\xff\xc0" in data:
            at = data.index(b"\xff\xc0")
            data[at + 5:at + 9] = struct.pack(">HH", height % 65536, width % 65536)
        return bytes(data)
    return bytes(data)


@fuzz_settings(max_examples=400)
@given(data=hostile_bytes())
def test_decoding_any_bytes_gives_an_image_or_a_typed_error(data):
    with bounded(5.0):
        try:
            image = decode_image(data, source="fuzz.bin")
        except EdgeregError as exc:
            assert_one_line(exc)
            return
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert image.shape[0] * image.shape[1] <= 50_000_000
        frame, _ = crop_resize(image, CONFIG)
        assert frame.shape == (16, 16, 3)


@fuzz_settings(max_examples=60)
@given(data=hostile_bytes(), suffix=st.sampled_from([".png", ".jpg", ".pgm", ".bin"]))
def test_reading_any_file_gives_an_image_or_a_typed_error(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("fuzz") / f"x{suffix}"
    path.write_bytes(data)
    with bounded(5.0):
        try:
            read_image(path)
        except EdgeregError as exc:
            assert_one_line(exc)
