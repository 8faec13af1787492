"""Preprocessing kernel benchmark: ratios measured in one run (this machine is noisy).

For batch 256 at 64x64 and 224x224, RGB with a circular mask:
* memory throughput of the fused kernel against ``numpy.copyto`` of the same output bytes (goal >= 0.8),
* speed-up against vectorized numpy and against the per-image numpy reference (goal >= 20x),
* speed-up against an OpenCV path: ``cv2.dnn.blobFromImages`` + normalize + mask (goal >= 10x),
* D4 TTA: 8 views in one call against 8 x one view (goal <= 1.0), two ways: one-view calls into 8
  distinct buffers (the same bytes written as the fused call: the fair comparison), and one-view
  calls reusing one buffer (which at 64x64 stays in the 32 MiB L3 cache, so it flatters the baseline).

``serial_vs_copyto_cpu`` is the serial kernel against ``copyto``, both timed by the CPU time of this
thread: the kernel's efficiency per core, which other jobs on a shared machine barely move.

The numba kernels are measured (this script imports them, and from then on ``preprocess_batch`` uses
them); the numpy twins that serve processes without numba (``edgereg.preprocess.small``) are
shown against ``copyto`` too.

Run: ``python benchmarks/bench_preprocess.py`` (add ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from edgereg.preprocess import PreprocessConfig, kernels, preprocess_batch, small
from edgereg.preprocess.batch import _mask
from edgereg.preprocess.reference import circle_mask, preprocess_batch_ref


def best_time(fn, repeats: int, clock=time.perf_counter) -> float:
    """Median time of ``fn`` over ``repeats`` runs after one warm-up (wall time unless ``clock`` says)."""
    fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return float(np.median(times))


def numpy_vectorized(images: np.ndarray, config: PreprocessConfig, mask: np.ndarray) -> np.ndarray:
    """The obvious whole-batch numpy pipeline (what one writes without a fused kernel)."""
    x = images[..., ::-1].astype(np.float32) / 255.0  # BGR -> RGB, (B,H,W,3)
    x = (x - np.asarray(config.mean, np.float32)) / np.asarray(config.std, np.float32)
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # (B,H,W,C) -> (B,C,H,W)
    x[:, :, ~mask] = config.fill
    return x


def opencv_path(images: np.ndarray, config: PreprocessConfig, mask: np.ndarray) -> np.ndarray:
    """cv2.dnn.blobFromImages (scale, mean, swapRB, NCHW) then std division and the mask."""
    h, w = config.input_size
    mean255 = tuple(255.0 * m for m in config.mean)
    blob = cv2.dnn.blobFromImages(list(images), scalefactor=1.0 / 255.0, size=(w, h), mean=mean255,
                                  swapRB=True, crop=False)  # (B,3,H,W), (x - mean*255)/255
    blob /= np.asarray(config.std, np.float32)[None, :, None, None]
    blob *= mask[None, None]
    blob[:, :, ~mask] = config.fill
    return blob


def run(size: int, batch: int, repeats: int, reference_batch: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    config = PreprocessConfig(input_size=(size, size), channels="rgb", crop="circle",
                              mean=(0.45, 0.5, 0.55), std=(0.22, 0.25, 0.27))
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    mask = circle_mask(size, size)
    out = np.empty((batch, 3, size, size), np.float32)
    out8 = np.empty((batch * 8, 3, size, size), np.float32)
    src = np.random.default_rng(1).random(out.shape, dtype=np.float32)
    dst = np.empty_like(src)

    kernel = best_time(lambda: preprocess_batch(images, config, out=out), repeats)
    copy = best_time(lambda: np.copyto(dst, src), repeats)
    # One thread, CPU time of this thread: the kernel's efficiency against memcpy, unmoved by other jobs.
    scale_, offset_ = config.affine()
    serial = best_time(lambda: kernels.fused_identity_serial(images, scale_, offset_, float(config.fill), True, False,
                                                             out), repeats, time.thread_time)
    copy_cpu = best_time(lambda: np.copyto(dst, src), repeats, time.thread_time)
    scale, offset = config.affine()
    twin = best_time(lambda: small.identity(images, scale, offset, config.fill, _mask(size, size), False, out),
                     repeats)
    vectorized = best_time(lambda: numpy_vectorized(images, config, mask), repeats)
    opencv = best_time(lambda: opencv_path(images, config, mask), repeats)
    ref_images = images[:reference_batch]
    reference = best_time(lambda: preprocess_batch_ref(ref_images, config), 1) * batch / reference_batch
    d4 = best_time(lambda: preprocess_batch(images, config, "d4", out=out8), repeats)
    buffers = [np.empty_like(out) for _ in range(8)]
    eight_distinct = best_time(lambda: [preprocess_batch(images, config, out=b) for b in buffers], repeats)

    np.testing.assert_allclose(preprocess_batch(images[:4], config), numpy_vectorized(images[:4], config, mask),
                               atol=1e-5)
    np.testing.assert_allclose(preprocess_batch(images[:4], config), opencv_path(images[:4], config, mask),
                               atol=1e-4)
    gbps = out.nbytes / kernel / 1e9
    return {
        "kernel_ms": kernel * 1e3,
        "kernel_GBps": gbps,
        "copyto_GBps": out.nbytes / copy / 1e9,
        "vs_copyto": copy / kernel,
        "serial_vs_copyto_cpu": copy_cpu / serial,
        "numpy_twin_vs_copyto": copy / twin,
        "vs_numpy_vectorized": vectorized / kernel,
        "vs_numpy_reference": reference / kernel,
        "vs_opencv": opencv / kernel,
        "d4_vs_8x_one_view": d4 / eight_distinct,
        "d4_vs_8x_reused_buffer": d4 / (8 * kernel),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="batch 32, 2 repeats")
    args = parser.parse_args()
    from edgereg.core.platform_info import runtime_line

    print(runtime_line(), flush=True)  # the CPU and instruction set behind every number below
    batch, repeats = (32, 2) if args.quick else (args.batch, args.repeats)
    goals = {"vs_copyto": ">= 0.8", "vs_numpy_reference": ">= 20", "vs_opencv": ">= 10",
             "d4_vs_8x_one_view": "<= 1.0"}
    print(f"fused preprocessing, batch {batch}, RGB + circle mask, median of {repeats}")
    for size in (64, 224):
        result = run(size, batch, repeats, reference_batch=min(batch, 16))
        print(f"\n{size}x{size}: kernel {result['kernel_ms']:.2f} ms = {result['kernel_GBps']:.2f} GB/s out "
              f"(copyto {result['copyto_GBps']:.2f} GB/s)")
        for key in ("vs_copyto", "serial_vs_copyto_cpu", "numpy_twin_vs_copyto", "vs_numpy_vectorized",
                    "vs_numpy_reference", "vs_opencv", "d4_vs_8x_one_view", "d4_vs_8x_reused_buffer"):
            goal = goals.get(key, "")
            print(f"  {key:<24} {result[key]:8.2f}   {('goal ' + goal) if goal else ''}")


if __name__ == "__main__":
    main()
