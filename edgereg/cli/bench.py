"""`edgereg bench MODEL`: throughput and latency by batch size, split into decode, preprocess and
inference, for each available execution provider."""

from __future__ import annotations

import argparse
import time


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench", help="images/s and latency by batch size and provider",
        description="Time decode (OpenCV, worker threads), preprocessing (fused numba kernel) and "
                    "inference (ONNX Runtime) of a model on generated JPEG frames, by batch size, "
                    "for each available provider. Numbers are medians of several runs in one process.",
        epilog="examples:\n  edgereg bench model.onnx\n  edgereg bench model.int8.onnx --batch 1,32 --tta d4",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model")
    parser.add_argument("--batch", default="1,8,32", help="comma-separated batch sizes (default 1,8,32)")
    parser.add_argument("--providers", default="available",
                        help="'available' (each one this build has), or a list like cpu,cuda")
    parser.add_argument("--tta", default="none", help="none, d4 or rot:N (default none)")
    parser.add_argument("--frame", default="480x640", help="source frame HxW (default 480x640)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
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

    from edgereg.errors import EdgeregError
    from edgereg.predictor import Predictor
    from edgereg.preprocess import decode_image, prepare_frames, preprocess_batch
    from edgereg.providers import AUTO_ORDER

    try:
        batches = [int(b) for b in args.batch.split(",")]
        height, width = (int(v) for v in args.frame.lower().split("x"))
    except ValueError:
        raise EdgeregError(f"--batch takes integers like 1,8,32 and --frame HxW like 480x640; "
                           f"got --batch {args.batch!r} --frame {args.frame!r}") from None
    if args.providers == "available":
        providers = [p for p in AUTO_ORDER if p in ort.get_available_providers()]
    else:
        providers = args.providers.split(",")
    rng = np.random.default_rng(0)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (9, 9), 3)
    jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    print(f"model {args.model}  frame {height}x{width} JPEG ({len(jpeg) // 1024} KiB)  tta {args.tta}")
    print(f"{'provider':<28}{'batch':>6}{'decode ms':>11}{'prep ms':>9}{'infer ms':>10}"
          f"{'latency ms':>12}{'images/s':>10}")
    for provider in providers:
        predictor = Predictor(args.model, providers=[provider], tta=args.tta, threads=args.threads)
        for batch in batches:
            predictor.batch_size = batch
            blobs = [jpeg] * batch
            frames = [decode_image(b) for b in blobs]
            prepared, _ = prepare_frames(frames, predictor.config)
            tensor = preprocess_batch(prepared, predictor.config, predictor.tta)
            t_decode = _median_time(lambda: [decode_image(b) for b in blobs], args.repeats)
            t_prep = _median_time(lambda: preprocess_batch(prepare_frames(frames, predictor.config)[0],
                                                           predictor.config, predictor.tta), args.repeats)
            t_infer = _median_time(lambda: predictor.session.run(None, {predictor._input: tensor}),
                                   args.repeats)
            total = t_decode + t_prep + t_infer
            print(f"{provider:<28}{batch:>6}{t_decode * 1e3:>11.2f}{t_prep * 1e3:>9.2f}"
                  f"{t_infer * 1e3:>10.2f}{total * 1e3:>12.2f}{batch / total:>10.1f}")
    print("decode is single-threaded here; `edgereg infer` overlaps it with inference in worker threads")
    return 0
