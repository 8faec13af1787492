"""Decoding: truncated files, error messages that name the file and the cause, tiny images, and the
decoder pool (its threads, and how many decodes it keeps in flight)."""

from __future__ import annotations

import errno
import os
import threading
import time

import cv2
import numpy as np
import pytest

from edgereg.errors import DecodeError
from edgereg.preprocess import decode, decode_image, default_threads, read_image, read_images


def png_bytes(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return encoded.tobytes()


def test_png_without_its_end_chunk_is_truncated_not_half_an_image():
    data = png_bytes(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    assert data.rfind(b"IEND") > 0
    cut = data[: data.rfind(b"IEND") - 4]  # everything before the IEND chunk
    with pytest.raises(DecodeError, match=r"^'scan.png': truncated image \(the end-of-image marker is missing\)$"):
        decode_image(cut, source="scan.png")
    assert decode_image(data, source="scan.png").shape == (32, 32, 3)


def test_one_pixel_image_decodes():
    pixel = np.array([[[10, 20, 30]]], dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(png_bytes(pixel)), pixel)


def test_decode_errors_name_the_source_or_say_bytes():
    with pytest.raises(DecodeError, match=r"^'<bytes>': empty file \(0 bytes\)$"):
        decode_image(b"")
    with pytest.raises(DecodeError, match=r"^'<bytes>': not a decodable image"):
        decode_image(b"certainly not an image")


def test_read_errors_say_what_is_wrong_with_the_path(tmp_path, monkeypatch):
    with pytest.raises(DecodeError, match=r"': is a directory, not an image$"):
        read_image(tmp_path)
    target = tmp_path / "photo.png"
    target.write_bytes(png_bytes(np.zeros((2, 2, 3), np.uint8)))
    real_stat, real_open = os.stat, os.open

    def failing(real, error):
        def call(path, *args, **kwargs):
            if str(path) == str(target):
                raise error
            return real(path, *args, **kwargs)
        return call

    cases = [(PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
             (OSError(errno.EIO, "Input/output error"), "unreadable (Input/output error)"),
             (OSError("stale handle"), "unreadable (stale handle)"),
             (FileNotFoundError(errno.ENOENT, "No such file"), "file not found")]
    for name, real in (("stat", real_stat), ("open", real_open)):  # refused when listed, or when opened
        for error, reason in cases:
            monkeypatch.setattr(os, name, failing(real, error))
            with pytest.raises(DecodeError) as info:
                read_image(target)
            assert str(info.value) == f"'{target}': {reason}", name
            monkeypatch.setattr(os, name, real)
    assert read_image(target).shape == (2, 2, 3)


@pytest.mark.parametrize("cpus, expected", [(8, 8), (2, 2), (1, 2), (None, 2)])
def test_default_decoder_threads_are_one_per_core_at_least_two(monkeypatch, cpus, expected):
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    assert default_threads() == expected


def test_decoder_pool_keeps_four_decodes_per_thread_in_flight(monkeypatch, tmp_path):
    """With 2 threads, 8 files are submitted before the first result is handed out, never more."""
    started: list[str] = []
    thread_names: set[str] = set()
    others_started = threading.Event()
    lock = threading.Lock()

    def fake_read(path):
        with lock:
            started.append(str(path))
            thread_names.add(threading.current_thread().name)
            if len(started) >= 8:
                others_started.set()
        if str(path).endswith("0.png"):  # hold the first file until the window is full
            others_started.wait(timeout=5.0)
        return np.zeros((1, 1, 3), np.uint8)

    paths = [tmp_path / f"{i}.png" for i in range(20)]
    results = read_images(paths, threads=2, loader=fake_read)
    first_index, _ = next(results)
    assert first_index == 0
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:  # let the submitted decodes finish; nothing else may start
        time.sleep(0.05)
    assert len(started) == 8
    assert all(name.startswith("edgereg-decode") for name in thread_names)
    assert [index for index, _ in results] == list(range(1, 20))
    assert len(started) == 20


def test_decoder_pool_uses_exactly_the_threads_it_is_given(monkeypatch, tmp_path):
    active, peak = [0], [0]
    lock = threading.Lock()

    def fake_read(path):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.02)
        with lock:
            active[0] -= 1
        return np.zeros((1, 1, 3), np.uint8)

    assert len(list(read_images([tmp_path / f"{i}.png" for i in range(12)], threads=1, loader=fake_read))) == 12
    assert peak[0] == 1
    monkeypatch.setattr(decode, "default_threads", lambda: 3)
    peak[0] = 0
    assert len(list(read_images([tmp_path / f"{i}.png" for i in range(24)], loader=fake_read))) == 24
    assert 2 <= peak[0] <= 3  # the default, not one thread and not Python's pool default
