"""Distributed training: sharding, and a real 2-process torchrun job on CPU with the gloo backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgereg.training.ddp import DistContext, shard, threads_per_process


@pytest.mark.parametrize("n, world", [(10, 3), (12, 4), (5, 2), (1, 2)])
def test_shards_cover_every_index_with_equal_lengths(n, world):
    indices = np.random.default_rng(0).permutation(n)
    parts = [shard(indices, DistContext(rank=r, world_size=world)) for r in range(world)]
    assert len({len(p) for p in parts}) == 1  # every rank runs the same number of steps
    assert set(np.concatenate(parts)) == set(indices)
    assert sum(len(p) for p in parts) - n < world  # padding only to the next multiple


def test_single_process_helpers_are_identity():
    indices = np.arange(7)
    assert shard(indices, DistContext()) is indices
    assert threads_per_process(DistContext(local_world_size=2), requested=3) == 3


def test_torchrun_two_cpu_processes_train_one_run(assay_dir, tmp_path):
    run = tmp_path / "ddp"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "edgereg.cli.main", "train", str(assay_dir), "--out", str(run), "--model", "cnn_small",
               "--epochs", "2", "--size", "24", "--batch-size", "8", "--threads", "1", "--device", "cpu"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((run / "run.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "done" and len(metrics["training"]["history"]) == 2
    assert done.stdout.count("distributed: 2 processes") == 1 and done.stdout.count("look at:") == 1  # rank 0 only
    assert (run / "best.pt").is_file() and (run / "report.png").is_file()
    per_rank = -(-len(record["split"]["train"]) // 2)  # each rank trains on its half of the epoch
    assert metrics["training"]["history"][0]["steps"] == max(1, round(per_rank / 8))
