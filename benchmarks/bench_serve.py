"""`edgereg serve` benchmark: what the web server costs on top of the work it serves (ratios in one run).

1. Streams. A 640x480 video at 10 fps, looped and paced like a camera (``--camera clip.avi``),
   read by the small CNN of ``bench_scoring.py``. The CPU of three processes, measured from
   ``/proc/PID/stat`` (every thread) over the same window length, in turns:
     a. the capture + inference loop alone (``edgereg.live.loop.LiveFeed``, exactly what serve runs),
     b. ``edgereg serve`` with no client,
     c. ``edgereg serve`` with 3 clients on ``/stream.mjpg`` and 3 on ``/events``.
   Reported in % of one core; the goal is c - a <= 15% (the server's own cost: HTTP, one JPEG
   encode per streamed frame shared by the 3 clients, JSON, event loop). The clients run in this
   process, so their CPU is not counted, but they share the machine's cores with the server.

2. API. 8 client threads POST one image each, back to back, on keep-alive connections, for a
   fixed time; the server micro-batches them (``--batch-wait-ms``). Compared with the same work
   in-process, at the same batch size (8):
     * ``Predictor.predict`` on already-decoded frames (the issue's reference; the uploads are
       uncompressed BMP, so decoding them is a copy and the ratio is the cost of HTTP + batching),
     * ``decode_image`` (in a thread pool, one thread per core) + ``Predictor.predict`` on the
       same JPEG bytes as the JPEG uploads.
   Throughput (images/s) ratios, goal >= 0.8; p50 / p99 request latency printed; for 320x240 and
   640x480 uploads by default (``--frames``). HTTP and
   in-process rounds alternate and the median of the per-round ratios is reported, so load from
   other processes hits both sides alike.

Run under ``flock`` on a shared machine (timings must not overlap another benchmark):
``flock /path/to/bench.lock python benchmarks/bench_serve.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from bench_scoring import build_cnn

from edgereg import Predictor
from edgereg.preprocess import decode_image, default_threads

TICKS = os.sysconf("SC_CLK_TCK")
LOOP_ALONE = """
import sys, time
from edgereg import Predictor
from edgereg.live.loop import LiveConfig, LiveFeed
from edgereg.batch.sources import CameraSource
model, video, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
predictor = Predictor(model, preprocess_parallel=False)
feed = LiveFeed(CameraSource(video, loop=True, realtime=True), predictor, config=LiveConfig(retry_max_s=3.0))
feed.start()
print("ready", flush=True)
time.sleep(seconds)
feed.stop()
print(feed.stats.summary(), flush=True)
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15 of stat)


def core_percent(pid: int, seconds: float) -> float:
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)


def make_video(path: Path, *, frames: int, fps: float, size=(480, 640)) -> Path:
    """Sharp, changing frames (they pass the quality gate), MJPG in AVI."""
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (size[1], size[0]))
    for _ in range(frames):
        blocks = rng.integers(40, 220, (size[0] // 16, size[1] // 16, 3), dtype=np.uint8)
        writer.write(cv2.resize(blocks, (size[1], size[0]), interpolation=cv2.INTER_NEAREST))
    writer.release()
    return path


def start_server(argv: list[str]) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen([sys.executable, "-m", "edgereg", "serve", *argv, "--port", "0"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = process.stderr.readline()
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if not match:
        process.kill()
        raise RuntimeError(f"edgereg serve did not start: {line}{process.stderr.read()}")
    threading.Thread(target=process.stderr.read, daemon=True).start()
    return process, int(match.group(1))


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()


class StreamClient(threading.Thread):
    """Reads an endpoint and counts what arrives (``marker`` occurrences: parts or events)."""

    def __init__(self, port: int, path: str, marker: bytes) -> None:
        super().__init__(daemon=True)
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.connection.request("GET", path)
        self.response = self.connection.getresponse()
        self.marker = marker
        self.count = 0
        self.running = True

    def run(self) -> None:
        tail = b""
        try:
            while self.running:
                chunk = self.response.read1(65536)
                if not chunk:
                    break
                data = tail + chunk
                self.count += data.count(self.marker)
                tail = data[-len(self.marker) + 1:]
        except Exception:
            pass

    def close(self) -> None:
        self.running = False
        self.connection.close()


def bench_streams(model: Path, workdir: Path, *, seconds: float, rounds: int, fps: float) -> None:
    video = make_video(workdir / "clip.avi", frames=int(5 * fps), fps=fps)
    print(f"\n## streams: 640x480 video at {fps:g} fps, {seconds:g} s windows, {rounds} rounds "
          "(% of one core, all threads of the process)")
    print(f"{'round':<7}{'loop alone':>12}{'serve idle':>12}{'serve 3+3':>12}{'3+3 - loop':>12}"
          f"{'mjpeg fps':>11}{'events/s':>10}")
    alone_list, idle_list, busy_list = [], [], []
    for round_number in range(rounds):
        child = subprocess.Popen([sys.executable, "-c", LOOP_ALONE, str(model), str(video), str(seconds + 5)],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        child.stdout.readline()
        time.sleep(3)  # warm-up: numba's cache, ORT's first runs
        alone = core_percent(child.pid, seconds)
        stop(child)

        server, port = start_server([str(model), "--camera", str(video), "--stream-fps", f"{fps:g}"])
        try:
            time.sleep(3)
            idle = core_percent(server.pid, seconds)
            clients = [StreamClient(port, "/stream.mjpg", b"--edgeregframe") for _ in range(3)]
            clients += [StreamClient(port, "/events", b"\ndata: ") for _ in range(3)]
            for client in clients:
                client.start()
            time.sleep(2)
            counts = [c.count for c in clients]
            started = time.monotonic()
            busy = core_percent(server.pid, seconds)
            elapsed = time.monotonic() - started
            rates = [(c.count - n) / elapsed for c, n in zip(clients, counts)]
            for client in clients:
                client.close()
        finally:
            stop(server)
        alone_list.append(alone)
        idle_list.append(idle)
        busy_list.append(busy)
        print(f"{round_number + 1:<7}{alone:>11.1f}%{idle:>11.1f}%{busy:>11.1f}%{busy - alone:>11.1f}%"
              f"{statistics.mean(rates[:3]):>11.1f}{statistics.mean(rates[3:]):>10.1f}")
    overhead = statistics.median(b - a for a, b in zip(alone_list, busy_list))
    print(f"median: loop alone {statistics.median(alone_list):.1f}%, serve idle {statistics.median(idle_list):.1f}%, "
          f"serve with 3 MJPEG + 3 event clients {statistics.median(busy_list):.1f}% of one core")
    print(f"server cost above the capture + inference loop: {overhead:.1f}% of one core (goal <= 15%): "
          f"{'met' if overhead <= 15 else 'MISSED'}")


def post_loop(port: int, body: bytes, content_type: str, stop_at: float, latencies: list[float],
              errors: list[str]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": content_type}
    try:
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            connection.request("POST", "/api/predict", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                errors.append(str(response.status))
                return
            latencies.append(time.perf_counter() - started)
    finally:
        connection.close()


def http_round(port: int, body: bytes, content_type: str, clients: int, seconds: float) -> tuple[float, list[float]]:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    stop_at = time.monotonic() + seconds
    threads = [threading.Thread(target=post_loop, args=(port, body, content_type, stop_at, latencies[i], errors))
               for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    if errors:
        raise RuntimeError(f"/api/predict answered {errors[0]}")
    flat = [x for per in latencies for x in per]
    return len(flat) / elapsed, flat


def inprocess_round(predictor: Predictor, work, batch: int, seconds: float) -> float:
    """Images/s of ``work()`` (one batch of ``batch`` images) run back to back for ``seconds``."""
    done, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        work()
        done += batch
    return done / (time.monotonic() - started)


def bench_api(model: Path, *, seconds: float, rounds: int, clients: int, frame_shape: tuple[int, int],
              batch_wait_ms: float) -> None:
    height, width = frame_shape
    rng = np.random.default_rng(1)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 3)
    uploads = {"bmp": cv2.imencode(".bmp", frame)[1].tobytes(), "jpeg": cv2.imencode(".jpg", frame)[1].tobytes()}
    predictor = Predictor(model, preprocess_parallel=False)
    # the in-process reference: decoded frames, distinct arrays like the server's (one array 8 times
    # would stay in the CPU cache and flatter the reference)
    frames = [decode_image(uploads["bmp"]) for _ in range(clients)]
    decoders = ThreadPoolExecutor(default_threads())  # decoding in threads, as predict_paths does
    in_process = {
        "bmp": lambda: predictor.predict(frames),
        "jpeg": lambda: predictor.predict(list(decoders.map(decode_image, [uploads["jpeg"]] * clients))),
    }
    print(f"\n## /api/predict: {clients} clients, one {width}x{height} image per request, "
          f"{seconds:g} s rounds, {rounds} rounds; in-process at batch {clients}")
    server, port = start_server([str(model), "--batch-wait-ms", f"{batch_wait_ms:g}"])
    try:
        for kind in ("bmp", "jpeg"):
            http_round(port, uploads[kind], f"image/{kind}", clients, 1.5)  # warm-up
            inprocess_round(predictor, in_process[kind], clients, 1.0)
            ratios, rates_http, rates_local, all_latencies = [], [], [], []
            cpu = {"local": 0.0, "server": 0.0, "client": 0.0, "local_images": 0, "http_images": 0}
            for _ in range(rounds):
                cpu_start = time.process_time()
                local = inprocess_round(predictor, in_process[kind], clients, seconds)
                cpu["local"] += time.process_time() - cpu_start
                cpu["local_images"] += local * seconds
                cpu_start, server_start = time.process_time(), cpu_seconds(server.pid)
                rate, latencies = http_round(port, uploads[kind], f"image/{kind}", clients, seconds)
                cpu["client"] += time.process_time() - cpu_start
                cpu["server"] += cpu_seconds(server.pid) - server_start
                cpu["http_images"] += len(latencies)
                ratios.append(rate / local)
                rates_http.append(rate)
                rates_local.append(local)
                all_latencies += latencies
            what = ("Predictor.predict on decoded frames" if kind == "bmp"
                    else "threaded decode_image + Predictor.predict")
            p50, p99 = np.percentile(all_latencies, [50, 99]) * 1e3
            ratio = statistics.median(ratios)
            goal = f" (goal >= 0.8): {'met' if ratio >= 0.8 else 'MISSED'}" if kind == "bmp" else ""
            print(f"{kind.upper():<5} uploads: HTTP {statistics.median(rates_http):,.0f} img/s vs in-process "
                  f"{statistics.median(rates_local):,.0f} img/s ({what}); ratio {ratio:.3f}{goal}; "
                  f"latency p50 {p50:.1f} ms, p99 {p99:.1f} ms ({len(all_latencies):,} requests)")
            print(f"      CPU per image: server {1e3 * cpu['server'] / cpu['http_images']:.2f} ms + clients "
                  f"{1e3 * cpu['client'] / cpu['http_images']:.2f} ms vs in-process "
                  f"{1e3 * cpu['local'] / cpu['local_images']:.2f} ms")
        _, _, metrics = _get(port, "/metrics")
        batches = re.search(rb"edgereg_predict_batch_images_count ([\d.e+]+)", metrics)
        images = re.search(rb"edgereg_predict_batch_images_sum ([\d.e+]+)", metrics)
        if batches and images:
            print(f"mean images per ONNX Runtime call: {float(images.group(1)) / float(batches.group(1)):.2f}")
    finally:
        stop(server)


def _get(port: int, path: str):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="an edgereg .onnx (default: the small CNN of bench_scoring)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each measured window")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians are reported)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent /api/predict clients")
    parser.add_argument("--fps", type=float, default=10.0, help="frame rate of the video and the stream cap")
    parser.add_argument("--frames", default="240x320,480x640",
                        help="sizes HxW of the uploaded images, comma-separated (default 240x320,480x640)")
    parser.add_argument("--batch-wait-ms", type=float, default=2.0, help="the server's --batch-wait-ms")
    parser.add_argument("--only", choices=("streams", "api"), default=None, help="run one part")
    parser.add_argument("--quick", action="store_true", help="short windows, one round: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 3.0, 1
    sizes = [tuple(int(v) for v in size.lower().split("x")) for size in args.frames.split(",")]
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} cores, load average {load:.1f} (ratios are from one run; a shared machine is noisy)")
    with tempfile.TemporaryDirectory(prefix="edgereg-bench-serve-") as tmp:
        model = Path(args.model) if args.model else build_cnn(Path(tmp) / "cnn.onnx")
        print(f"model {model.name}")
        if args.only in (None, "streams"):
            bench_streams(model, Path(tmp), seconds=args.seconds, rounds=args.rounds, fps=args.fps)
        if args.only in (None, "api"):
            for height, width in sizes:
                bench_api(model, seconds=args.seconds, rounds=args.rounds, clients=args.clients,
                          frame_shape=(height, width), batch_wait_ms=args.batch_wait_ms)


if __name__ == "__main__":
    main()
