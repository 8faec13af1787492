"""Batch scoring benchmark: ratios measured in one run (this machine is noisy).

On a folder of generated JPEGs (default 2,000 at 480x640) and a small CNN (generated with
onnx.helper: three strided 3x3 convolutions, 32-64-128 channels, at 64x64; or ``--model``):

* end-to-end ``edgereg.batch.scoring.score_source`` (decode threads + batched inference + CSV rows)
  against a full-resolution decode-only loop (``read_image``) with the same number of threads on the
  same files (goal >= 1.0). The generated model's card has ``decode="reduced"`` (what ``edgereg
  train`` records): a 480x640 JPEG whose 480x480 crop feeds a 64x64 model is decoded at 1/4 in the
  DCT domain (``edgereg.preprocess.frames``); ``--decode full`` measures the old path,
* the same two in images per CPU second of this process (all threads): the ratio both reach when
  they keep every core busy, which load from other jobs on a shared machine does not move,
* end-to-end against a naive loop: ``cv2.imread`` + ``Predictor.predict([image])`` per image.

Decode-only and end-to-end run in alternating rounds and the median of the per-round ratios is
reported, so that load from other processes hits both sides alike. When decode-only already keeps
every core busy, end-to-end cannot beat decode / (decode + crop + inference) CPU time; that
ceiling is printed too, from single-thread stage costs. ONNX Runtime gets the threads
``edgereg infer`` gives it (``edgereg.batch.scoring.default_inference_threads``) unless ``--ort-threads``.

Run: ``python benchmarks/bench_scoring.py`` (``--quick`` for a smoke run, ``--model m.onnx`` for a
real model).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from edgereg import Predictor
from edgereg.batch.scoring import default_inference_threads, output_columns, score_source
from edgereg.batch.sources import FolderSource
from edgereg.batch.writers import CsvRowWriter
from edgereg.core.card import ModelCard
from edgereg.preprocess import default_threads, read_frame, read_image


def build_cnn(path: Path, *, input_size: int = 64, widths=(32, 64, 128), seed: int = 0,
              decode: str = "reduced") -> Path:
    """Write a small random-weight CNN regressor with an edgereg card (needs ``onnx``).

    image (N, 3, S, S) -> [Conv 3x3 stride 2 -> Relu] x len(widths) -> GlobalAveragePool -> Gemm -> (N, 1)
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgereg.export.card_io import embed_card

    rng = np.random.default_rng(seed)
    nodes, inits, previous, channels = [], [], "image", 3
    for i, width in enumerate(widths):
        weight = rng.normal(0, np.sqrt(2 / (9 * channels)), (width, channels, 3, 3)).astype(np.float32)
        inits += [numpy_helper.from_array(weight, f"w{i}"),
                  numpy_helper.from_array(np.zeros(width, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [previous, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[3, 3],
                                   strides=[2, 2], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        previous, channels = f"r{i}", width
    head = rng.normal(0, 1 / np.sqrt(channels), (channels, 1)).astype(np.float32)
    inits += [numpy_helper.from_array(head, "wh"), numpy_helper.from_array(np.zeros(1, np.float32), "bh")]
    nodes += [helper.make_node("GlobalAveragePool", [previous], ["pool"]),
              helper.make_node("Flatten", ["pool"], ["flat"]),  # (N, C, 1, 1) -> (N, C)
              helper.make_node("Gemm", ["flat", "wh", "bh"], ["value"])]
    graph = helper.make_graph(
        nodes, "bench_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, input_size, input_size])],
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["N", 1])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    card = ModelCard(kind="scalar", targets=("value",), input_size=(input_size, input_size), crop="center",
                     decode=decode)
    embed_card(model, card)
    onnx.save(model, str(path))
    return path


def make_jpegs(folder: Path, n: int, height: int, width: int, seed: int = 0) -> list[Path]:
    """``n`` smooth random JPEGs (quality 90); a few base frames, each shifted, so encoding is quick."""
    rng = np.random.default_rng(seed)
    bases = [cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 3) for _ in range(4)]
    paths = []
    for i in range(n):
        frame = np.roll(bases[i % 4], shift=i, axis=1)
        path = folder / f"img{i:05d}.jpg"
        cv2.imwrite(str(path), frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def decode_only(paths: list[Path], threads: int) -> tuple[float, float]:
    """(images/s, images per CPU second) of read_image over ``paths`` in a pool of ``threads``."""
    start, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(read_image, paths, chunksize=8):
            pass
    return len(paths) / (time.perf_counter() - start), len(paths) / (time.process_time() - cpu)


def end_to_end(folder: Path, predictor: Predictor, threads: int, out: Path) -> tuple[float, float]:
    """(images/s, images per CPU second) of score_source on the folder, writing real CSV rows."""
    columns = output_columns(predictor)
    start, cpu = time.perf_counter(), time.process_time()
    with CsvRowWriter(out, columns) as rows:
        stats = score_source(FolderSource(folder), predictor, rows, decode_threads=threads)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert stats.failed == 0, "generated images must all decode"
    return stats.scored / elapsed, stats.scored / cpu


def stage_costs(paths: list[Path], predictor: Predictor) -> dict[str, float]:
    """Single-thread milliseconds per image: full decode, the card's decode + crop/resize, prep + inference."""
    start = time.perf_counter()
    for p in paths:
        read_image(p)
    decode = time.perf_counter() - start
    start = time.perf_counter()
    crops = [read_frame(p, predictor.config) for p in paths]
    load = time.perf_counter() - start
    frames = np.stack([frame for frame, _ in crops])  # (B, h, w, 3) uint8
    start = time.perf_counter()
    predictor.predict_prepared(frames, [box for _, box in crops])
    infer = time.perf_counter() - start
    return {name: 1e3 * t / len(paths) for name, t in (("decode", decode), ("load", load), ("infer", infer))}


def naive_loop(paths: list[Path], predictor: Predictor) -> float:
    """Images/s of cv2.imread + predict([image]) one image at a time."""
    start = time.perf_counter()
    for path in paths:
        predictor.predict([cv2.imread(str(path))])
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="number of JPEGs (default 2000)")
    parser.add_argument("--frame", default="480x640", help="JPEG size HxW (default 480x640)")
    parser.add_argument("--model", default=None, help="an edgereg .onnx (default: a generated small CNN)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--decode", choices=("reduced", "full"), default="reduced",
                        help="the generated model's decode policy (default reduced, as edgereg train records)")
    parser.add_argument("--threads", type=int, default=default_threads(), help="decoder threads")
    parser.add_argument("--ort-threads", type=int, default=default_inference_threads(),
                        help="ONNX Runtime intra-op threads (default: what edgereg infer uses)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating decode/end-to-end rounds")
    parser.add_argument("--naive-n", type=int, default=500, help="images timed in the naive loop")
    parser.add_argument("--quick", action="store_true", help="200 small images: a smoke run")
    args = parser.parse_args()
    from edgereg.core.platform_info import runtime_line

    print(runtime_line(), flush=True)  # the CPU and instruction set behind every number below
    n, (height, width) = args.n, (int(v) for v in args.frame.lower().split("x"))
    if args.quick:
        n, height, width, args.rounds = 200, 240, 320, 1

    with tempfile.TemporaryDirectory(prefix="edgereg-bench-") as tmp:
        tmp = Path(tmp)
        folder = tmp / "imgs"
        folder.mkdir()
        model = Path(args.model) if args.model else build_cnn(tmp / "cnn.onnx", decode=args.decode)
        paths = make_jpegs(folder, n, height, width)
        predictor = Predictor(model, batch_size=args.batch, threads=args.ort_threads, providers="cpu",
                              preprocess_parallel=False)  # as `edgereg infer` runs it
        predictor.predict([cv2.imread(str(paths[0]))] * 2)  # warm-up: kernels, ORT arenas
        decode_only(paths[:50], args.threads)  # warm the page cache

        decode_rates, e2e_rates, cpu_ratios = [], [], []
        for _ in range(args.rounds):
            decode_rate, decode_cpu = decode_only(paths, args.threads)
            e2e_rate_round, e2e_cpu = end_to_end(folder, predictor, args.threads, tmp / "preds.csv")
            decode_rates.append(decode_rate)
            e2e_rates.append(e2e_rate_round)
            cpu_ratios.append(e2e_cpu / decode_cpu)
        ratios = np.array(e2e_rates) / np.array(decode_rates)
        e2e_rate = float(np.median(e2e_rates))
        naive = Predictor(model, batch_size=1, threads=args.ort_threads, providers="cpu")
        naive_rate = naive_loop(paths[: args.naive_n], naive)
        print(f"{n} JPEGs {height}x{width}, model {model.name} (input {predictor.card.input_size}), "
              f"decode {predictor.config.decode}, batch {args.batch}, {args.threads} decoder threads, "
              f"{args.ort_threads} ORT threads, "
              f"{os.cpu_count()} cores, {args.rounds} rounds")
        print(f"decode only        {float(np.median(decode_rates)):9.1f} images/s (median)")
        print(f"end to end         {e2e_rate:9.1f} images/s (median)")
        print(f"naive loop         {naive_rate:9.1f} images/s ({min(n, args.naive_n)} images)")
        print(f"end-to-end / decode-only  {float(np.median(ratios)):5.2f}  (goal >= 1.0; "
              f"rounds {', '.join(f'{r:.2f}' for r in ratios)})")
        print(f"end-to-end / decode-only in images per CPU second  {float(np.median(cpu_ratios)):5.2f}  (rounds "
              f"{', '.join(f'{r:.2f}' for r in cpu_ratios)}; all threads of this process: what the ratio is "
              "when both keep every core busy, unmoved by other jobs on a shared machine)")
        print(f"end-to-end / naive loop   {e2e_rate / naive_rate:5.2f}")
        costs = stage_costs(paths[:200], predictor)
        ceiling = costs["decode"] / (costs["load"] + costs["infer"])
        print(f"single-thread ms/image: full decode {costs['decode']:.2f}; the card's decode + crop + resize "
              f"{costs['load']:.2f}, prep+inference {costs['infer']:.2f}")
        print(f"ceiling when decode-only already fills every core: full decode / all stages = {ceiling:.2f}; "
              f"the pipeline reaches {float(np.median(ratios)) / ceiling:.0%} of it")


if __name__ == "__main__":
    main()
