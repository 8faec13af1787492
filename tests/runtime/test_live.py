"""The live readout: run_live on a generated video and on a scripted source that drops out and
recovers, smoothing and stability, and `edgereg infer --camera` through main(argv) and a real
Ctrl-C. No test needs a camera."""

from __future__ import annotations

import functools
import json
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from edgereg import Predictor
from edgereg.batch.sources import CameraSource
from edgereg.cli.main import main
from edgereg.core.card import ModelCard
from edgereg.errors import CameraError
from edgereg.live.loop import NO_FRAME, LiveConfig, LiveStats, draw_overlay, run_live
from edgereg.live.smoothing import EmaSmoother, MedianSmoother, StabilityTracker, stability_tolerance


def textured(rng, level=128, size=(48, 64)):
    """A sharp frame (random 4x4 blocks around ``level``) that passes the quality gate."""
    blocks = np.clip(rng.normal(level, 40, (size[0] // 4, size[1] // 4, 3)), 0, 255).astype(np.uint8)
    return cv2.resize(blocks, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


class ScriptedCamera:
    """Plays a script: an array is a frame, None a failed read, an exception is raised by read()."""

    def __init__(self, script):
        self.script = list(script)
        self.ended = False
        self.released = False

    def read(self):
        if not self.script:
            self.ended = True
            return False, None
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return (False, None) if item is None else (True, item)

    def release(self):
        self.released = True


class FakeClock:
    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def time(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def predictor(model_factory):
    return Predictor(model_factory(targets=("conc",), range=((-2.0, 2.0),), crop="none", input_size=(16, 16)))


def test_video_file_gives_one_reading_per_frame_and_withholds_black_ones(predictor, tmp_path, rng):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (64, 48))
    for i in range(8):
        writer.write(np.zeros((48, 64, 3), np.uint8) if i in (3, 4) else textured(rng, 60 + 15 * i))
    writer.release()
    readings = list(run_live(CameraSource(str(video)), predictor))
    assert [r.frame for r in readings] == list(range(8))
    assert [r.quality for r in readings] == ["ok"] * 3 + ["black"] * 2 + ["ok"] * 3
    assert all(r.values is None and r.smoothed is None and not r.stable for r in readings[3:5])
    capture = cv2.VideoCapture(str(video))  # the same decoded frames, scored directly
    frames = [capture.read()[1] for _ in range(8)]
    capture.release()
    expected = predictor.predict([frames[i] for i in (0, 1, 2, 5, 6, 7)]).values[:, 0]
    got = [r.values["conc"] for r in readings if r.ok]
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_source_failing_mid_stream_backs_off_and_recovers(predictor, rng):
    frame = textured(rng)
    frames = [np.clip(frame.astype(int) + rng.integers(-3, 4, frame.shape), 0, 255).astype(np.uint8)
              for _ in range(8)]
    script = frames[:4] + [None, CameraError("could not open camera 0"), None, None] + frames[4:]
    camera, clock = ScriptedCamera(script), FakeClock()
    config = LiveConfig(smooth_window=3, retry_initial_s=0.5, retry_max_s=3.0)
    readings = list(run_live(camera, predictor, config=config, clock=clock.time, sleep=clock.sleep))
    assert [r.quality for r in readings] == ["ok"] * 4 + [NO_FRAME] * 4 + ["ok"] * 4
    assert clock.sleeps == [0.5, 1.0, 2.0, 3.0]  # doubling, capped
    assert "could not open camera 0" in readings[5].note and "retry 2 in 1.0 s" in readings[5].note
    assert all(r.values is None for r in readings[4:8])
    back = readings[8]
    assert back.frame == 4 and "after 4 failed read(s)" in back.note
    assert back.smoothed == back.values and not back.stable  # smoothing restarted after the drop-out
    assert readings[-1].stable  # three readings of the same scene again
    assert readings[8].timestamp == 1000.0 + sum(clock.sleeps)
    assert camera.released


def test_giving_up_after_max_retries(predictor):
    camera = ScriptedCamera([None] * 10)
    clock = FakeClock()
    with pytest.raises(CameraError, match="no frame after 3 attempts"):
        list(run_live(camera, predictor, config=LiveConfig(max_retries=2), clock=clock.time, sleep=clock.sleep))
    assert len(clock.sleeps) == 2 and camera.released


def test_frozen_and_blurred_frames_are_withheld_and_reset_stability(predictor, rng):
    frame = textured(rng)
    blurred = cv2.GaussianBlur(frame, (0, 0), 8)
    script = [frame.copy() for _ in range(5)] + [blurred]
    readings = list(run_live(ScriptedCamera(script), predictor, config=LiveConfig(smooth_window=2)))
    assert [r.quality for r in readings] == ["ok", "ok", "ok", "frozen", "frozen", "blurred"]
    assert readings[2].stable and "identical" in readings[3].note
    assert "sharpness" in readings[5].note


def test_quality_gate_off_reads_every_frame(predictor):
    script = [np.zeros((20, 20, 3), np.uint8)] * 3
    readings = list(run_live(ScriptedCamera(script), predictor, config=LiveConfig(quality=None)))
    assert [r.quality for r in readings] == ["ok"] * 3 and readings[0].values["conc"] == pytest.approx(-2.0)


def test_stopping_early_releases_the_source_and_max_frames(predictor, rng):
    camera = ScriptedCamera([textured(rng, 80 + i) for i in range(10)])
    readings = run_live(camera, predictor)
    next(readings)
    readings.close()
    assert camera.released
    camera = ScriptedCamera([textured(rng, 80 + i) for i in range(10)])
    assert len(list(run_live(camera, predictor, config=LiveConfig(max_frames=4)))) == 4


def test_reading_json_has_the_documented_fields(predictor, rng):
    (reading,) = run_live(ScriptedCamera([textured(rng)]), Predictor(predictor.path, tta="d4"))
    record = json.loads(reading.to_json())
    assert {"timestamp", "value", "spread", "smoothed", "stable", "quality"} <= set(record)
    assert record["quality"] == "ok" and set(record["value"]) == {"conc"} and record["spread"]["conc"] >= 0
    assert record["quality_detail"]["sharpness"] > 10


def test_stats_summary_counts_withheld_and_dropouts(predictor, rng):
    script = [textured(rng), np.zeros((48, 64, 3), np.uint8), None, None, textured(rng, 90)]
    clock = FakeClock()
    stats = LiveStats()
    for reading in run_live(ScriptedCamera(script), predictor, clock=clock.time, sleep=clock.sleep):
        stats.add(reading)
    text = stats.summary()
    assert "3 frames: 2 readings, 1 withheld (1 black)" in text and "1 camera drop-out(s), 2 failed reads" in text


def test_overlay_writes_on_a_copy_of_the_frame(rng):
    frame = textured(rng, size=(120, 160))
    original = frame.copy()
    drawn = draw_overlay(frame, ["conc 182.3 mg/L", "STABLE"], ok=True)
    assert np.array_equal(frame, original) and drawn.shape == frame.shape
    changed = np.any(drawn != frame, axis=2)
    assert changed[:40].sum() > 100 and changed[80:].sum() == 0  # text in the top-left corner only


# ------------------------------------------------------------------ smoothing and stability


def test_median_ignores_a_single_outlier_and_ema_follows_a_step():
    median = MedianSmoother(3)
    assert [median.update(np.array([v]))[0] for v in (10, 10, 99, 10)] == [10, 10, 10, 10]
    ema = EmaSmoother(3)  # alpha = 0.5
    assert [ema.update(np.array([v]))[0] for v in (0.0, 8.0, 8.0)] == [0.0, 4.0, 6.0]
    ema.reset()
    assert ema.update(np.array([5.0]))[0] == 5.0


def test_angles_are_smoothed_on_the_circle():
    median = MedianSmoother(3, kind="angle")
    values = [median.update(np.array([a]))[0] for a in (358.0, 2.0, 4.0)]
    assert values[-1] == pytest.approx(2.0)
    ema = EmaSmoother(3, kind="angle")  # alpha = 0.5: halfway between 350 and 10 is 0, not 180
    ema.update(np.array([350.0]))
    assert ema.update(np.array([10.0]))[0] == pytest.approx(0.0, abs=1e-9)
    assert 0.0 <= ema.update(np.array([350.0]))[0] < 360.0
    tracker = StabilityTracker(2, np.array([5.0]), circular=True)
    tracker.update(np.array([359.0]))
    assert tracker.update(np.array([1.0]))  # 2 degrees apart across 0


def test_distribution_median_sums_to_one():
    median = MedianSmoother(3, kind="distribution")
    for row in ([0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.6, 0.1, 0.3]):
        out = median.update(np.array(row))
    assert out.sum() == pytest.approx(1.0)


def test_stability_needs_n_readings_within_tolerance():
    tracker = StabilityTracker(3, np.array([1.0]))
    assert [tracker.update(np.array([v])) for v in (5.0, 5.4, 5.9, 6.5, 6.6)] == [False, False, True, False, True]
    tracker.reset()
    assert not tracker.update(np.array([6.6]))


def test_default_tolerance_is_one_percent_of_the_range():
    card = ModelCard(kind="scalar", targets=("c",), input_size=(8, 8), range=((80.0, 350.0),))
    assert stability_tolerance(card)[0] == pytest.approx(2.7)
    assert stability_tolerance(card, 0.5)[0] == 0.5
    unbounded = ModelCard(kind="vector", targets=("a", "b"), input_size=(8, 8))
    assert np.isnan(stability_tolerance(unbounded)).all()
    relative = StabilityTracker(2, stability_tolerance(unbounded))
    relative.update(np.array([100.0, 10.0]))
    assert relative.update(np.array([100.5, 10.05])) and not relative.update(np.array([102.0, 10.05]))


# ------------------------------------------------------------------ the CLI


def write_video(path, rng, n=6):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (64, 48))
    for i in range(n):
        writer.write(textured(rng, 100 + i))
    writer.release()
    return str(path)


def test_cli_camera_video_jsonl(predictor, tmp_path, rng, capsys):
    video = write_video(tmp_path / "v.avi", rng)
    assert main(["infer", str(predictor.path), "--camera", video, "--jsonl", "--smooth", "3"]) == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["frame"] for r in records] == list(range(6)) and all(r["quality"] == "ok" for r in records)
    assert [r["stable"] for r in records][:2] == [False, False]
    assert "6 frames: 6 readings, 0 withheld" in captured.err


def test_cli_camera_plain_lines_and_frame_limit(predictor, tmp_path, rng, capsys):
    video = write_video(tmp_path / "v.avi", rng)
    assert main(["infer", str(predictor.path), "--camera", video, "--frames", "2", "--tta", "d4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("#0") and "conc" in lines[0] and "±" in lines[0]


def test_cli_show_without_gui_is_a_clear_error(predictor, tmp_path, rng, capsys):
    try:
        cv2.namedWindow("probe")
        cv2.destroyWindow("probe")
        pytest.skip("this OpenCV has a GUI")
    except cv2.error:
        pass
    video = write_video(tmp_path / "v.avi", rng)
    assert main(["infer", str(predictor.path), "--camera", video, "--show"]) == 2
    err = capsys.readouterr().err
    assert "--show needs OpenCV with a GUI" in err and err.count("\n") == 1


def test_cli_bad_camera_spec_and_undecodable_video_file(predictor, tmp_path, capsys):
    assert main(["infer", str(predictor.path), "--camera", str(tmp_path / "none.avi")]) == 2
    assert "not a device index" in capsys.readouterr().err
    (tmp_path / "junk.avi").write_text("not a video")
    assert main(["infer", str(predictor.path), "--camera", str(tmp_path / "junk.avi")]) == 2
    assert "could not open file" in capsys.readouterr().err  # at once: a file is not retried


@pytest.mark.slow
def test_ctrl_c_exits_cleanly_with_a_summary(predictor):
    # a device that never opens: the loop retries until interrupted
    process = subprocess.Popen([sys.executable, "-m", "edgereg", "infer", str(predictor.path), "--camera", "97"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               # SIGINT as a terminal delivers it, even under a runner that ignores it
                               preexec_fn=functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL))
    try:
        first = process.stdout.readline()  # the first "no frame" line: the loop is running
        assert first.startswith("no frame: could not open camera 97")
        time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert "Traceback" not in err and "0 frames: 0 readings" in err and "camera drop-out" in err
