"""Helpers of the hostile-input tests: CLI subprocesses, one-line error checks, mounts, images."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest


def write_pngs(folder: Path, count: int, *, seed: int = 0, size=(24, 20)) -> list[str]:
    """``count`` small random PNGs ``img0.png`` ... in ``folder``; returns their paths in natural order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"img{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        paths.append(str(path))
    return paths


def run_cli(*args: str, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m edgereg ARGS`` in a subprocess; a hang fails the test after ``timeout`` seconds."""
    return subprocess.run([sys.executable, "-m", "edgereg", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def assert_one_line_error(stderr: str, *needles: str) -> str:
    """The CLI said what went wrong on one ``edgereg: error:`` line, without a traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("edgereg: error:")]
    assert len(errors) == 1, stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _can_mount() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount") is not None


@contextlib.contextmanager
def mounted(target: Path, *options: str):
    """Mount over ``target`` (``mount OPTIONS target``) for the block; skip the test where root
    cannot mount (a container without CAP_SYS_ADMIN, a non-root CI)."""
    target.mkdir(parents=True, exist_ok=True)
    if not _can_mount():
        pytest.skip("needs root with mount permission")
    result = subprocess.run(["mount", *options, str(target)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here: {result.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


@contextlib.contextmanager
def small_tmpfs(target: Path, size: str):
    """A tmpfs of ``size`` (e.g. "64k") at ``target``: a disk that fills up."""
    with mounted(target, "-t", "tmpfs", "-o", f"size={size}", "tmpfs") as path:
        yield path


@contextlib.contextmanager
def read_only_dir(target: Path):
    """``target`` as a read-only folder: a read-only bind mount as root, mode 0555 otherwise."""
    target.mkdir(parents=True, exist_ok=True)
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        target.chmod(0o555)
        try:
            yield target
        finally:
            target.chmod(0o755)
        return
    with mounted(target, "--bind", str(target)):
        result = subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {result.stderr.strip()}")
        yield target


def png_bomb(width: int, height: int) -> bytes:
    """A valid 8-bit gray PNG of ``width x height`` zeros, compressed to ~1 KB per MP.

    Built without compressing every row: one block of rows is deflated and closed with a full flush
    (which resets the compressor, so the same rows always give the same bytes), repeated, and ended
    with an empty final block and the Adler-32 of all-zero data, ``((n mod 65521) << 16) | 1``.
    """
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = next(r for r in (1000, 500, 100, 10, 1) if height % r == 0)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: the zlib header is written here
    block = deflate.compress(b"\0" * ((width + 1) * rows)) + deflate.flush(zlib.Z_FULL_FLUSH)
    total = (width + 1) * height  # a filter byte, then one byte per pixel, per row
    stream = b"\x78\xda" + block * (height // rows) + b"\x03\x00" + struct.pack(">I", ((total % 65521) << 16) | 1)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", stream) + chunk(b"IEND", b"")


# Runs ARGS as a grandchild and writes its peak RSS (KiB) to the file named first. The grandchild is
# forked from this small interpreter, not from pytest: Linux keeps a process's peak RSS across
# fork + exec, so a child forked straight from a test process that has grown to 1 GB reports >= 1 GB.
_PEAK_WRAPPER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as handle:
    handle.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def run_cli_measured(*args: str, timeout: float = 60) -> tuple[int, str, str, int]:
    """``python -m edgereg ARGS`` in a subprocess: (exit code, stdout, stderr, peak RSS in bytes).

    The peak RSS is the CLI process's own (``os.wait4`` in a small wrapper process, see
    ``_PEAK_WRAPPER``), not the test process's. A run still going after ``timeout`` seconds is killed
    with its wrapper and reported as a hang.
    """
    import signal
    import tempfile
    import threading

    with tempfile.TemporaryDirectory() as scratch:
        out_path, err_path, peak_path = (Path(scratch) / name for name in ("out", "err", "peak"))
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            command = [sys.executable, "-c", _PEAK_WRAPPER, str(peak_path), sys.executable, "-m", "edgereg"]
            process = subprocess.Popen([*command, *map(str, args)], stdout=out, stderr=err, start_new_session=True)
            hung = threading.Event()

            def kill_group() -> None:
                hung.set()
                os.killpg(process.pid, signal.SIGKILL)

            timer = threading.Timer(timeout, kill_group)
            timer.start()
            try:
                code = process.wait()
            finally:
                timer.cancel()
        if hung.is_set():
            raise AssertionError(f"edgereg {' '.join(map(str, args))} hung: killed after {timeout} s")
        peak_kib = int(peak_path.read_text())
        return code, out_path.read_text(errors="replace"), err_path.read_text(errors="replace"), peak_kib * 1024
