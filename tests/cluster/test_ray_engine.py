"""`edgereg infer --engine ray` on a local Ray, against the local engine; real kills of real processes."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from scoring_files import read_csv, write_images, write_resume_listing, write_slow_images

from edgereg.cli.main import main
from edgereg.cluster.parts import MANIFEST, state_dir_for

pytestmark = pytest.mark.ray






def write_broken(folder):
    jpeg = cv2.imencode(".jpg", np.full((32, 32, 3), 90, np.uint8))[1].tobytes()
    (folder / "c_truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "f_zero.png").write_bytes(b"")
    (folder / "k_text.png").write_text("not an image")
    return sorted(str(folder / name) for name in ("c_truncated.jpg", "f_zero.png", "k_text.png"))




@pytest.fixture
def model(model_factory):
    return str(model_factory(targets=("conc",), range=((-2.0, 2.0),), units=("mg/L",)))


def committed_rows(out):
    manifest = state_dir_for(out) / MANIFEST
    if not manifest.exists():
        return 0
    return sum(json.loads(line).get("rows", 0) for line in manifest.read_bytes().splitlines()[1:]
               if line.endswith(b"}"))


def descendants(pid):
    """``{pid: command line}`` of every live process below ``pid`` (Linux /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in found:
                try:
                    found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                frontier.append(child)
    return found


def kill_leftovers(pids):
    """SIGKILL the listed processes that still live (Ray's agents can outlive a killed driver)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def wait_until(condition, what, timeout_s=120.0, process=None, log=None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            break
        if condition():
            return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
    ended = process and process.poll() is not None
    state = f"the run ended with exit code {process.returncode}" if ended else "timed out"
    raise AssertionError(f"{state} while waiting for {what}; its stderr ends: {tail}")


def test_same_rows_errors_and_exit_code_as_the_local_engine(local_ray, model, tmp_path, rng, capsys):
    folder = tmp_path / "imgs"
    good = write_images(folder, rng, [f"im{i}.png" for i in (1, 2, 10, 11, 20, 3)] + ["ünï code.png"])
    write_broken(folder)
    local, ray_out = tmp_path / "local.csv", tmp_path / "ray.csv"
    assert main(["infer", model, str(folder), "--out", str(local), "--batch", "3"]) == 3
    assert main(["infer", model, str(folder), "--out", str(ray_out), "--batch", "3", "--engine", "ray",
                 "--commit-rows", "4"]) == 3
    assert ray_out.read_bytes() == local.read_bytes()  # same rows, order, numbers and flags, byte for byte
    assert (tmp_path / "ray.errors.csv").read_bytes() == (tmp_path / "local.errors.csv").read_bytes()
    assert len(read_csv(ray_out)) == len(good) and not state_dir_for(ray_out).exists()
    err = capsys.readouterr().err
    assert "Ray local: 2 CPUs, 0 GPUs; 1 CPU actor (1 thread each)" in err
    errors_csv = tmp_path / "ray.errors.csv"
    assert f"scored {len(good)}, failed 3 (reasons in {errors_csv}: '{folder / 'c_truncated.jpg'}'" in err

    # JSONL with TTA: the spread columns too
    assert main(["infer", model, str(folder), "--out", str(tmp_path / "l.jsonl"), "--tta", "d4"]) == 3
    assert main(["infer", model, str(folder), "--out", str(tmp_path / "r.jsonl"), "--tta", "d4",
                 "--engine", "ray"]) == 3
    assert (tmp_path / "r.jsonl").read_bytes() == (tmp_path / "l.jsonl").read_bytes()


def test_list_glob_shard_unordered_and_stdout(local_ray, model, tmp_path, rng, capsys):
    folder = tmp_path / "imgs"
    good = write_images(folder, rng, [f"a{i}.png" for i in range(9)])
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(["imgs/a3.png", "imgs/missing.png"] + [p for p in good if "a3" not in p]) + "\n")
    for i in (1, 2):
        local, ray_out = tmp_path / f"l{i}.csv", tmp_path / f"r{i}.csv"
        main(["infer", model, str(listing), "--out", str(local), "--shard", f"{i}/2"])
        main(["infer", model, str(listing), "--out", str(ray_out), "--shard", f"{i}/2", "--engine", "ray",
              "--unordered"])
        assert sorted(map(tuple, (r.values() for r in read_csv(ray_out)))) == \
            sorted(map(tuple, (r.values() for r in read_csv(local))))
        assert read_csv(tmp_path / f"r{i}.errors.csv") == read_csv(tmp_path / f"l{i}.errors.csv")
    capsys.readouterr()
    assert main(["infer", model, str(folder / "a*.png"), "--engine", "ray"]) == 0  # a glob, rows on stdout
    out = capsys.readouterr().out
    assert [r["path"] for r in csv.DictReader(out.splitlines())] == good


def test_fail_fast_stops_where_the_local_engine_stops(local_ray, model, tmp_path, rng):
    folder = tmp_path / "imgs"
    write_images(folder, rng, ["a1.png", "a2.png", "c1.png"])
    (folder / "b1.png").write_bytes(b"")
    for engine in ("local", "ray"):
        out = tmp_path / f"{engine}.csv"
        assert main(["infer", model, str(folder), "--out", str(out), "--fail-fast", "--engine", engine]) == 3
        assert [r["path"].rsplit("/", 1)[1] for r in read_csv(out)] == ["a1.png", "a2.png"]


@pytest.mark.parametrize("argv, message", [
    (["--engine", "ray", "--actors", "2"], "would hold 2 of the cluster's 2 CPUs"),
    (["--engine", "ray", "--providers", "cuda"], "has no GPU"),
    (["--engine", "ray", "--decode-threads", "2"], "--decode-threads applies to --engine local only"),
    (["--actors", "1"], "--actors applies to --engine ray only"),
])
def test_user_errors_are_one_line_and_exit_2(local_ray, model, tmp_path, rng, capsys, argv, message):
    write_images(tmp_path / "imgs", rng, ["a.png"])
    code = main(["infer", model, str(tmp_path / "imgs"), "--out", str(tmp_path / "p.csv"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not list(tmp_path.glob("p.csv*"))  # a refused run leaves no state and no output behind


def test_video_and_missing_extra_are_refused(model, tmp_path, rng, monkeypatch, capsys):
    write_images(tmp_path / "imgs", rng, ["a.png"])
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (32, 24))
    writer.write(np.zeros((24, 32, 3), np.uint8))
    writer.release()
    pytest.importorskip("ray.data")
    assert main(["infer", model, str(video), "--engine", "ray"]) == 2
    assert "for a video use the default --engine local" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray.data", None)  # as if the extra were not installed
    assert main(["infer", model, str(tmp_path / "imgs"), "--engine", "ray"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'edgereg[cluster]'" in err and err.count("\n") == 1
    assert main(["infer", model, str(tmp_path / "imgs")]) == 0  # the local engine needs no Ray


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds Ray's processes in /proc")
def test_driver_killed_then_resume_scores_every_input_exactly_once(local_ray, model, tmp_path, rng, capsys):
    listing = tmp_path / "list.txt"
    order, bad = write_resume_listing(tmp_path / "imgs", listing, rng, write_broken, first=16, slow=3, second=12)
    out = tmp_path / "preds.csv"
    stderr = open(tmp_path / "stderr.txt", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "edgereg", "infer", model, str(listing), "--out", str(out), "--engine", "ray",
         "--batch", "4", "--commit-rows", "4"], stdout=subprocess.DEVNULL, stderr=stderr)
    ray_processes = {}
    try:
        wait_until(lambda: committed_rows(out) >= 16, "16 committed rows", process=process,
                   log=tmp_path / "stderr.txt")
        ray_processes = descendants(process.pid)
        process.kill()  # SIGKILL: no cleanup, no merge
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        kill_leftovers(ray_processes)
        stderr.close()
    assert process.returncode == -9 and not out.exists()
    assert any("raylet" in command for command in ray_processes.values())  # it had started its own Ray
    good = [p for p in order if p not in bad]
    before = committed_rows(out)
    assert before >= 16

    assert main(["infer", model, str(listing), "--out", str(out), "--engine", "ray"]) == 2
    assert "unfinished --engine ray run" in capsys.readouterr().err
    assert main(["infer", model, str(listing), "--out", str(out), "--engine", "ray", "--resume", "--tta", "d4"]) == 2
    assert "cannot resume" in capsys.readouterr().err
    assert main(["infer", model, str(listing), "--out", str(out), "--engine", "ray", "--resume"]) == 3
    assert f"{before} already in" in capsys.readouterr().err
    assert [r["path"] for r in read_csv(out)] == good  # every good image exactly once, in input order
    assert sorted(r["path"] for r in read_csv(tmp_path / "preds.errors.csv")) == bad
    assert not state_dir_for(out).exists()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds Ray's processes in /proc")
def test_worker_processes_killed_mid_run_still_every_input_exactly_once(local_ray, model, tmp_path, rng, capsys):
    folder = tmp_path / "imgs"
    first = write_images(folder, rng, [f"a{i:02d}.png" for i in range(16)])
    slow = write_slow_images(folder, [f"slow{i}.png" for i in range(8)])  # one block: seconds of decoding
    second = write_images(folder, rng, [f"b{i:02d}.png" for i in range(16)])
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(first + slow + second) + "\n")
    out = tmp_path / "preds.csv"
    killed = {}

    def workers(title):
        """Processes below this test process (its Ray's workers) whose title is ``title`` (an actor's
        title gains the method's name while it runs one)."""
        return [pid for pid, command in descendants(os.getpid()).items()
                if command.strip() == title or command.startswith(title + ".")]

    def kill_workers():
        # 1. the decode task of the slow block: the worker that keeps decoding for over a second
        seen: dict[int, float] = {}
        while "decode" not in killed:
            now = time.monotonic()
            busy = workers("ray::MapBatches(decode_batch)")
            seen = {pid: seen.get(pid, now) for pid in busy}
            for pid, since in seen.items():
                if now - since > 1.0:
                    os.kill(pid, signal.SIGKILL)  # mid-task: Ray retries the task on another worker
                    killed["decode"] = pid
            time.sleep(0.25)
        # 2. the ONNX Runtime actor, once it runs (its retried input is still being decoded)
        # (looked up again until one is killed: a scan of /proc can miss a process it sees a moment later)
        deadline = time.monotonic() + 60
        while "actor" not in killed and time.monotonic() < deadline:
            actors = workers("ray::MapWorker(MapBatches(OnnxScorer))")
            if actors:
                killed["rows before the actor was killed"] = committed_rows(out)
            for pid in actors:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # Ray Data restarts the actor and resubmits its tasks
                    killed["actor"] = pid
            time.sleep(0.1)

    helper = threading.Thread(target=kill_workers, daemon=True)
    helper.start()
    code = main(["infer", model, str(listing), "--out", str(out), "--engine", "ray", "--batch", "4",
                 "--commit-rows", "8"])
    helper.join(timeout=60)
    assert "decode" in killed and "actor" in killed, killed
    assert killed["rows before the actor was killed"] < len(first) + len(slow) + len(second)  # mid-run
    assert code == 0
    assert [r["path"] for r in read_csv(out)] == first + slow + second  # each once, in input order


GPU_SCRIPT = """
import sys
from edgereg.cli.main import main
from edgereg.cluster.session import ray_session

with ray_session(num_cpus=2, num_gpus=1):  # a logical GPU: Ray schedules by it, whatever the hardware
    sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_gpu_actors_request_a_gpu_each_and_say_which_provider_ran(model, tmp_path, rng):
    pytest.importorskip("ray.data")
    folder = tmp_path / "imgs"
    good = write_images(folder, rng, ["a.png", "b.png", "c.png"])
    out = tmp_path / "preds.csv"
    result = subprocess.run([sys.executable, "-c", GPU_SCRIPT, "infer", model, str(folder), "--out", str(out),
                             "--engine", "ray"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 CPUs, 1 GPUs; 1 GPU actor (1 thread each)" in result.stderr
    assert [r["path"] for r in read_csv(out)] == good  # the actor got the GPU and ran
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert "GPU actors ran on CPUExecutionProvider" in result.stderr


class DroppingDataset:
    """A Ray dataset whose batches lose the rows of some inputs on the way to the driver, as a
    block that Ray drops silently would."""

    def __init__(self, dataset, lost_index):
        self.dataset, self.lost_index = dataset, lost_index

    def iter_batches(self, **kwargs):
        for batch in self.dataset.iter_batches(**kwargs):
            keep = batch["index"] != self.lost_index
            yield {name: column[keep] for name, column in batch.items()}


def test_an_input_that_ray_drops_fails_the_run_and_resume_scores_it(local_ray, model, tmp_path, rng, capsys,
                                                                     monkeypatch):
    import edgereg.cluster.engine as engine

    folder = tmp_path / "imgs"
    good = write_images(folder, rng, [f"im{i}.png" for i in range(6)])
    local, out = tmp_path / "local.csv", tmp_path / "ray.csv"
    assert main(["infer", model, str(folder), "--out", str(local)]) == 0
    real = engine.build_dataset
    monkeypatch.setattr(engine, "build_dataset", lambda *args, **kwargs: DroppingDataset(real(*args, **kwargs), 2))
    argv = ["infer", model, str(folder), "--out", str(out), "--engine", "ray", "--commit-rows", "2"]
    assert main(argv) == 1  # never exit 0 with a row missing
    err = capsys.readouterr().err
    assert f"the Ray run ended without 1 of its 6 inputs ('{good[2]}')" in err and "with --resume" in err
    assert committed_rows(out) == 5 and not out.exists()  # what came back is kept, nothing merged
    monkeypatch.undo()
    assert main(argv + ["--resume"]) == 0
    assert out.read_bytes() == local.read_bytes() and not state_dir_for(out).exists()


def test_overwrite_that_fails_half_way_leaves_no_old_row_for_resume(local_ray, model, model_factory, tmp_path, rng,
                                                                    capsys, monkeypatch):
    import edgereg.cluster.engine as engine

    old_model = str(model_factory(targets=("conc",), range=((-2.0, 2.0),), units=("mg/L",), mean=(0.2, 0.2, 0.2)))
    folder = tmp_path / "imgs"
    write_images(folder, rng, [f"im{i}.png" for i in range(6)])
    reference, out = tmp_path / "reference.csv", tmp_path / "preds.csv"
    assert main(["infer", model, str(folder), "--out", str(reference)]) == 0
    assert main(["infer", old_model, str(folder), "--out", str(out)]) == 0  # the old rows, of another model
    old_rows = {tuple(row.values()) for row in read_csv(out)}
    assert not old_rows & {tuple(row.values()) for row in read_csv(reference)}  # none reads like a new one
    real = engine.build_dataset
    monkeypatch.setattr(engine, "build_dataset", lambda *args, **kwargs: DroppingDataset(real(*args, **kwargs), 4))
    assert main(["infer", model, str(folder), "--out", str(out), "--engine", "ray", "--overwrite",
                 "--commit-rows", "2"]) == 1  # fails half-way, under the new model's identity
    monkeypatch.undo()
    assert main(["infer", model, str(folder), "--out", str(out), "--resume"]) == 0  # the local engine
    assert out.read_bytes() == reference.read_bytes()  # every row from the new model, none from the old
