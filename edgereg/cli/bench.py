"""`edgereg bench MODEL`: throughput and latency by batch size, split into decode, preprocess and
inference, for each available execution provider."""

from __future__ import annotations

import argparse
import re
import time

from edgereg.cli.common import command_parser
from edgereg.cli.options import MAX_PIXELS_HELP, MAX_THREADS, add_card_option, count, pixels
from edgereg.preprocess.decode import DEFAULT_MAX_PIXELS, check_pixels

MAX_BATCH = 4096  # images per timed call
MAX_FRAME_BYTES = 1 << 30  # decoded frames of one batch (batch x H x W x 3): 1 GiB


def _batches(text: str) -> tuple[int, ...]:
    """``--batch 1,8,32``: positive integers up to MAX_BATCH."""
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(re.fullmatch(r"[0-9]+", p) for p in parts) or not all(1 <= int(p) <= MAX_BATCH
                                                                                   for p in parts):
        raise argparse.ArgumentTypeError(f"expected batch sizes 1..{MAX_BATCH} separated by commas, e.g. 1,8,32; "
                                         f"got {text!r}")
    return tuple(int(p) for p in parts)


def _frame(text: str) -> tuple[int, int]:
    """``--frame HxW``: positive integers, e.g. 480x640."""
    match = re.fullmatch(r"\s*([0-9]{1,9})\s*[xX]\s*([0-9]{1,9})\s*", text)
    if match is None or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise argparse.ArgumentTypeError(f"expected HxW with positive integers, e.g. 480x640; got {text!r}")
    return int(match.group(1)), int(match.group(2))


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = command_parser(
        subparsers, "bench", help="images/s and latency by batch size and provider",
        description="Time decode (OpenCV, worker threads), preprocessing (fused numba kernel) and "
                    "inference (ONNX Runtime) of a model on generated JPEG frames, by batch size, "
                    "for each available provider. Numbers are medians of several runs in one process.",
        epilog="examples:\n  edgereg bench model.onnx\n  edgereg bench model.int8.onnx --batch 1,32 --tta d4",
    )
    parser.add_argument("model")
    parser.add_argument("--batch", type=_batches, default=(1, 8, 32), metavar="N[,N...]",
                        help=f"comma-separated batch sizes, 1..{MAX_BATCH} (default 1,8,32)")
    parser.add_argument("--providers", default="available",
                        help="'available' (each one this build has), or a list like cpu,cuda")
    parser.add_argument("--tta", default="none", help="none, d4 or rot:N (default none)")
    parser.add_argument("--frame", type=_frame, default=(480, 640), metavar="HxW",
                        help="source frame HxW (default 480x640)")
    parser.add_argument("--repeats", type=count(1, 10_000), default=5, metavar="N",
                        help="timed repeats per measurement (default 5)")
    parser.add_argument("--threads", type=count(1, MAX_THREADS), default=None, metavar="N",
                        help="ONNX Runtime intra-op threads (default: one per core)")
    parser.add_argument("--max-pixels", type=pixels, default=DEFAULT_MAX_PIXELS, metavar="N", help=MAX_PIXELS_HELP)
    add_card_option(parser)
    return parser


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def run(args) -> int:
    import cv2
    import numpy as np
    import onnxruntime as ort

    from edgereg.cli.options import card_from_option
    from edgereg.core.platform_info import runtime_line
    from edgereg.core.predictor import Predictor
    from edgereg.core.providers import AUTO_ORDER, resolve_providers
    from edgereg.errors import EdgeregError
    from edgereg.preprocess import decode_image, prepare_frames, preprocess_batch

    batches = args.batch
    height, width = args.frame
    too_large = check_pixels(width, height, args.max_pixels)
    if too_large:
        raise EdgeregError(f"--frame: {too_large}; give a smaller frame, or raise --max-pixels")
    largest = max(batches) * height * width * 3
    if largest > MAX_FRAME_BYTES:
        raise EdgeregError(f"--batch {max(batches)} of --frame {height}x{width} frames needs "
                           f"{largest / 2 ** 30:.1f} GiB of decoded frames (at most 1 GiB); use a smaller "
                           "--batch or --frame")
    if args.providers == "available":
        providers = [p for p in AUTO_ORDER if p in ort.get_available_providers()]
    else:
        requested = [name.strip() for name in args.providers.split(",") if name.strip()] or ["auto"]
        providers = list(dict.fromkeys(resolve_providers([name])[0] for name in requested))  # checked, in order
    card = card_from_option(args)
    rng = np.random.default_rng(0)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (9, 9), 3)
    jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    print(f"model {args.model}  frame {height}x{width} JPEG ({len(jpeg) // 1024} KiB)  tta {args.tta}")
    print(runtime_line())
    print(f"{'provider':<28}{'batch':>6}{'decode ms':>11}{'prep ms':>9}{'infer ms':>10}"
          f"{'latency ms':>12}{'images/s':>10}")
    for provider in providers:
        predictor = Predictor(args.model, providers=[provider], tta=args.tta, threads=args.threads, card=card)
        for batch in batches:
            predictor.batch_size = batch
            blobs = [jpeg] * batch
            frames = [decode_image(b, max_pixels=args.max_pixels) for b in blobs]
            prepared, _ = prepare_frames(frames, predictor.config)
            tensor = preprocess_batch(prepared, predictor.config, predictor.tta)
            # each closure runs (repeatedly) within this iteration: the defaults bind this iteration's values
            t_decode = _median_time(lambda blobs=blobs: [decode_image(b, max_pixels=args.max_pixels) for b in blobs],
                                    args.repeats)
            t_prep = _median_time(lambda frames=frames, predictor=predictor: preprocess_batch(
                prepare_frames(frames, predictor.config)[0], predictor.config, predictor.tta), args.repeats)
            t_infer = _median_time(lambda predictor=predictor, tensor=tensor: predictor.session.run(
                None, {predictor._input: tensor}), args.repeats)
            total = t_decode + t_prep + t_infer
            print(f"{provider:<28}{batch:>6}{t_decode * 1e3:>11.2f}{t_prep * 1e3:>9.2f}"
                  f"{t_infer * 1e3:>10.2f}{total * 1e3:>12.2f}{batch / total:>10.1f}")
    print("decode is single-threaded here; `edgereg infer` overlaps it with inference in worker threads")
    return 0
