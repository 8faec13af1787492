"""The parts of `edgereg serve` that need no server: the micro-batcher, the shared capture loop
(LiveFeed), the looping and paced video source, and the reading hub."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from serve_helpers import SwitchableCamera, sample_frame, wait_for, write_video

from edgereg import Predictor
from edgereg.batch.sources import CameraSource
from edgereg.core.predictor import Predictions
from edgereg.live.loop import NO_FRAME, LiveConfig, LiveFeed, run_live
from edgereg.preprocess import CropBox
from edgereg.serve.batcher import MicroBatcher
from edgereg.serve.hub import ReadingHub

PATIENCE = 60.0  # seconds to wait for a state on a busy machine; a passing test waits far less


class GatedModel:
    """predict_prepared that records batch sizes; the first call waits until ``gate`` is set."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []

    def __call__(self, frames, boxes):
        self.entered.set()
        self.gate.wait(PATIENCE)
        self.batches.append(len(frames))
        values = frames.reshape(len(frames), -1)[:, :1].astype(np.float64)  # (B, H*W*3) -> (B, 1): first byte
        return Predictions(values, None, ("v",), np.arange(len(frames)))


def job(value: int, n: int = 1):
    frames = np.full((n, 2, 2, 3), value, np.uint8)
    return frames, [CropBox(0, 0, 2, 2)] * n


def test_micro_batcher_runs_waiting_requests_as_one_call_and_splits_results():
    model = GatedModel()
    batcher = MicroBatcher(model, max_images=32, max_wait_s=0.0)
    try:
        first = batcher.submit(*job(1))
        assert model.entered.wait(PATIENCE)  # the first call is running; everything below queues behind it
        futures = [batcher.submit(*job(10 + i, n=1 + i % 2)) for i in range(8)]
        model.gate.set()
        assert first.result(PATIENCE).values[:, 0].tolist() == [1.0]
        for i, future in enumerate(futures):
            result = future.result(PATIENCE)
            assert result.values[:, 0].tolist() == [10.0 + i] * (1 + i % 2)  # each request gets its own rows
        assert model.batches == [1, 12]  # eight requests, 12 images, one ONNX Runtime call
    finally:
        batcher.close()


def test_micro_batcher_respects_max_images_and_reports_errors():
    model = GatedModel()
    batcher = MicroBatcher(model, max_images=4, max_wait_s=0.0)
    try:
        batcher.submit(*job(1))
        assert model.entered.wait(PATIENCE)
        futures = [batcher.submit(*job(i, n=3)) for i in range(3)]
        model.gate.set()
        assert all(f.result(PATIENCE).values.shape == (3, 1) for f in futures)
        assert model.batches == [1, 3, 3, 3]  # 3 + 3 > 4: never over the cap
    finally:
        batcher.close()

    def broken(frames, boxes):
        raise RuntimeError("model exploded")
    failing = MicroBatcher(broken)
    try:
        with pytest.raises(RuntimeError, match="model exploded"):
            failing.submit(*job(1)).result(PATIENCE)
    finally:
        failing.close()
    with pytest.raises(RuntimeError, match="closed"):
        failing.submit(*job(1))


def test_live_feed_shares_one_loop_with_subscribers_and_recovers(assay_model):
    predictor = Predictor(assay_model)
    camera = SwitchableCamera(fps=60)
    feed = LiveFeed(camera, predictor, config=LiveConfig(smooth_window=2, retry_initial_s=0.02, retry_max_s=0.05))
    seen_a, seen_b = [], []
    feed.subscribe(seen_a.append)
    unsubscribe_b = feed.subscribe(seen_b.append)
    feed.start()
    try:
        assert wait_for(lambda: len(seen_a) >= 5, PATIENCE)
        unsubscribe_b()
        count_b = len(seen_b)  # the capture thread may be handing out one more reading right now
        assert feed.connected() and feed.latest is not None and feed.frame_age_s() >= 0
        camera.unplugged = True
        assert wait_for(lambda: not feed.connected(), PATIENCE)
        assert feed.latest.quality == NO_FRAME
        camera.unplugged = False
        assert wait_for(lambda: feed.connected(), PATIENCE)
    finally:
        feed.stop(timeout_s=PATIENCE)
    assert not feed.running and camera.released and feed.error is None
    assert count_b <= len(seen_b) <= count_b + 1  # unsubscribed: at most the reading then in hand
    assert seen_a[:len(seen_b)] == seen_b  # the same Reading objects: one loop, several consumers
    assert feed.stats.frames == sum(r.quality != NO_FRAME for r in seen_a) and feed.stats.dropouts >= 1


def test_feed_stop_interrupts_a_backoff_wait(assay_model):
    camera = SwitchableCamera(fps=100)
    camera.unplugged = True
    backoff = 3600.0  # far longer than the test may wait: only an interrupted wait ends in time
    feed = LiveFeed(camera, Predictor(assay_model), config=LiveConfig(retry_initial_s=backoff, retry_max_s=backoff))
    feed.start()
    assert wait_for(lambda: feed.latest is not None, PATIENCE)
    feed.stop(timeout_s=PATIENCE)
    assert not feed.running and camera.released


def test_looping_video_plays_again_survives_removal_and_keeps_its_frame_rate(assay_model, tmp_path):
    video = write_video(tmp_path / "clip.avi", n=5, fps=50.0)
    naps = []

    def nap(seconds):
        naps.append(seconds)
        time.sleep(seconds)
    source = CameraSource(str(video), loop=True, realtime=True, sleep=nap)
    started = time.monotonic()
    frames = [source.read()[1] for _ in range(12)]
    elapsed = time.monotonic() - started
    assert all(f is not None for f in frames) and not source.ended
    np.testing.assert_array_equal(frames[0], frames[5])  # the clip starts over
    assert naps and all(0 < s <= 0.02 + 1e-6 for s in naps)  # paced at 50 fps, never more than a period
    assert elapsed >= 11 * 0.02 - 0.005  # 12 frames at 50 fps take 11 periods at least
    source.release()

    moved = tmp_path / "away.avi"
    source = CameraSource(str(video), loop=True)
    readings = run_live(source, Predictor(assay_model), config=LiveConfig(retry_initial_s=0.01, retry_max_s=0.01),
                        sleep=lambda s: None)
    assert [next(readings).quality for _ in range(5)] == ["ok"] * 5
    video.rename(moved)  # gone when the clip ends
    lost = next(readings)
    assert lost.quality == NO_FRAME and "does it exist" in lost.note
    moved.rename(video)
    back = next(readings)
    assert back.quality == "ok" and "frames are back" in back.note
    readings.close()
    once = CameraSource(str(video))  # without loop: a file ends
    assert len(list(run_live(once, Predictor(assay_model)))) == 5


def test_hub_wakes_waiters_from_another_thread_and_keeps_history():
    from edgereg.live.loop import Reading

    hub = ReadingHub(history_s=60, max_items=50)

    async def scenario():
        hub.bind(asyncio.get_running_loop())
        assert not await hub.wait_newer(0, timeout_s=0.05)
        reading = Reading(1.0, 0, "ok", values={"c": 1.0}, smoothed={"c": 1.0})
        threading.Timer(0.05, lambda: hub.publish(reading)).start()
        assert await hub.wait_newer(0, timeout_s=PATIENCE)
        for i in range(1, 80):
            hub.publish(Reading(1.0 + i, i, "ok", values={"c": float(i)}, smoothed={"c": float(i)},
                                image=sample_frame(i)))
        hub.publish(Reading(100.0, None, NO_FRAME, note="gone"))
    asyncio.run(scenario())
    assert hub.seq == 81 and hub.oldest_seq() == 32  # at most 50 kept
    assert [item.seq for item in hub.since(78)] == [79, 80, 81]
    assert hub.camera_lost() and hub.latest_with_image().seq == 80
    history = hub.history(60, max_points=10)
    assert len(history["timestamp"]) <= 10 and history["quality"][-1] == NO_FRAME
    assert history["smoothed"]["c"][-1] is None and history["timestamp"][-1] == 100.0


def test_hub_history_keeps_readings_not_frames():
    """Memory stays flat: the history (up to 20,000 readings) holds no frame, only the latest does;
    the loop's statistics keep a bounded window of processing times."""
    from edgereg.live.loop import LiveStats, Reading

    hub = ReadingHub(history_s=3600, max_items=20_000)
    readings = [Reading(float(i), i, "ok", values={"c": 1.0}, smoothed={"c": 1.0}, process_ms=1.0,
                        image=np.zeros((120, 160, 3), np.uint8)) for i in range(300)]  # a new frame each, like a camera
    for reading in readings:
        hub.publish(reading)
    held = [item.seq for item in hub.since(0) if item.reading.image is not None]
    assert len(hub.since(0)) == 300 and held == []  # every reading kept, no frame
    assert hub.latest().seq == 300 and hub.latest().reading.image is not None  # the snapshot's and stream's frame
    assert hub.latest_with_image().seq == 300
    assert hub.history(3600)["timestamp"][-1] == 299.0

    stats = LiveStats(keep_times=100)
    for reading in readings:
        stats.add(reading)
    assert len(stats.process_ms) == 100 and stats.frames == 300  # bounded, however long the loop runs
    assert "(median of the last 100)" in stats.summary()


def test_live_loop_hides_credentials_in_notes_and_names(assay_model):
    """A source of any kind whose error or name carries a URL's password: the reading's note (sent to
    web clients and printed by `edgereg infer --camera`) and the feed's name show it redacted."""
    from edgereg.errors import CameraError

    class Refusing:
        name = "stream 'http://viewer:s3cret@cam.local/mjpg'"

        def read(self):
            raise CameraError("401 from http://viewer:s3cret@cam.local/mjpg")

        def release(self):
            pass

    readings = run_live(Refusing(), Predictor(assay_model), config=LiveConfig(max_retries=1), sleep=lambda s: None)
    first = next(readings)
    assert first.quality == NO_FRAME and first.note.startswith("401 from http://***@cam.local/mjpg")
    with pytest.raises(CameraError) as raised:
        next(readings)
    assert "s3cret" not in str(raised.value)
    assert LiveFeed(Refusing(), Predictor(assay_model)).name == "stream 'http://***@cam.local/mjpg'"
