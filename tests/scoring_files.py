"""Files the folder-scoring tests (local and Ray engines) write and read: small random images,
slow-to-decode images, and the rows of an output CSV."""

from __future__ import annotations

import csv

import cv2
import numpy as np


def read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_images(folder, rng, names) -> list[str]:
    """Random 24x20 BGR PNGs (or whatever the names' suffixes say) in ``folder``; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        cv2.imwrite(str(folder / name), rng.integers(0, 256, (24, 20, 3), dtype=np.uint8))
    return [str(folder / name) for name in names]


def write_slow_images(folder, names) -> list[str]:
    """Valid 7000x7000 PNGs (49 MP, under the 50 MP default) of ~0.6 MB that take a while to decode:
    they keep a run busy mid-way (a FIFO cannot: non-regular files are refused without blocking)."""
    image = np.zeros((7000, 7000, 3), dtype=np.uint8)
    image[::50] = 200
    data = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(data)
    return [str(folder / name) for name in names]


def write_resume_listing(folder, listing, rng, write_broken, *, first: int, slow: int,
                         second: int) -> tuple[list[str], list[str]]:
    """The input of a kill-then-resume test, written to ``listing`` one path a line.

    In input order: ``first`` random images, the first broken file, ``slow`` slow-to-decode images
    (a run killed while on them is mid-way), ``second`` random images, then the other broken files;
    ``write_broken(folder)`` writes the broken files and returns their paths.

    Returns:
        (every path in input order, the broken files' paths).
    """
    first_paths = write_images(folder, rng, [f"a{i:02d}.png" for i in range(first)])
    slow_paths = write_slow_images(folder, [f"slow{i}.png" for i in range(slow)])
    second_paths = write_images(folder, rng, [f"b{i:02d}.png" for i in range(second)])
    bad = write_broken(folder)
    order = first_paths + [bad[0]] + slow_paths + second_paths + bad[1:]
    listing.write_text("\n".join(order) + "\n")
    return order, bad
