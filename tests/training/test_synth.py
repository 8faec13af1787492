"""Synthetic datasets: the files written, their determinism, and that each label is true to its image."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from edgereg.cli.main import main
from edgereg.errors import DatasetError, ShapeError
from edgereg.training import synth
from edgereg.training.synth import ASSAY_RANGE, TASKS, assay_colour, assay_oracle, make_dataset

EXPECTED_COLUMNS = {
    "assay": ["concentration", "group"],
    "gravel": ["bin0", "bin1", "bin2", "bin3", "bin4", "group"],
    "box": ["x", "y", "group"],
    "pixelstats": ["mean", "median", "std"],
    "angle": ["angle"],
    "count": ["count"],
}


def read_labels(root):
    with open(root / "labels.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_png(root, relative):
    return cv2.imread(str(root / relative), cv2.IMREAD_UNCHANGED)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_make_dataset_writes_labels_and_images(tmp_path, task):
    size = max(TASKS[task].min_size, 32)
    csv_path = make_dataset(task, tmp_path / task, n=6, seed=1, size=size)

    assert csv_path == tmp_path / task / "labels.csv"
    with open(csv_path, newline="") as handle:
        header = next(csv.reader(handle))
    assert header == ["path", *EXPECTED_COLUMNS[task]]
    rows = read_labels(csv_path.parent)
    assert len(rows) == 6
    for row in rows:
        assert not row["path"].startswith("/") and row["path"].startswith("images/")
        image = read_png(csv_path.parent, row["path"])
        assert image is not None and image.dtype == np.uint8 and image.shape[:2] == (size, size)
        for column in EXPECTED_COLUMNS[task]:
            if column != "group":
                assert np.isfinite(float(row[column]))


@pytest.mark.parametrize("task", sorted(TASKS))
def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path, task):
    size = max(TASKS[task].min_size, 32)
    first = make_dataset(task, tmp_path / "a", n=5, seed=7, size=size).parent
    again = make_dataset(task, tmp_path / "b", n=5, seed=7, size=size, threads=1).parent
    other = make_dataset(task, tmp_path / "c", n=5, seed=8, size=size).parent

    assert (first / "labels.csv").read_bytes() == (again / "labels.csv").read_bytes()
    for row in read_labels(first):
        assert (first / row["path"]).read_bytes() == (again / row["path"]).read_bytes()
    assert (first / "labels.csv").read_bytes() != (other / "labels.csv").read_bytes()


def test_default_sizes(tmp_path):
    for task, side in (("assay", 128), ("box", 64), ("pixelstats", 28)):
        root = make_dataset(task, tmp_path / task, n=1).parent
        assert read_png(root, "images/00000.png").shape[:2] == (side, side)


def test_existing_dataset_is_kept_unless_overwrite(tmp_path):
    make_dataset("box", tmp_path, n=2, size=16)
    with pytest.raises(DatasetError, match="already exists.*--overwrite"):
        make_dataset("box", tmp_path, n=3, size=16)
    make_dataset("box", tmp_path, n=3, size=16, overwrite=True)
    assert len(read_labels(tmp_path)) == 3


@pytest.mark.parametrize("kwargs, message", [
    (dict(task="asay", n=2), "did you mean 'assay'"),
    (dict(task="box", n=0), "positive number of images"),
    (dict(task="box", n=2, seed=-1), "seed must be an integer >= 0"),
    (dict(task="gravel", n=2, size=8), "size for 'gravel' must be an integer in 48..4096"),
])
def test_bad_arguments_raise_dataset_error(tmp_path, kwargs, message):
    task = kwargs.pop("task")
    with pytest.raises(DatasetError, match=message):
        make_dataset(task, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out" / "labels.csv").exists()


# ---- assay -------------------------------------------------------------------------------------

def test_assay_colour_curve_is_monotone_and_nonlinear():
    concentration = np.linspace(*ASSAY_RANGE, 271)
    colour = assay_colour(concentration)  # (271, 3)
    assert colour.shape == (271, 3)
    assert np.all((colour >= 0) & (colour <= 255))
    assert np.all(np.diff(colour, axis=0) < 0), "every channel darkens as the concentration rises"
    chord = colour[0] + (colour[-1] - colour[0]) * ((concentration - ASSAY_RANGE[0]) / np.ptp(concentration))[:, None]
    assert np.abs(colour - chord).max() > 10, "a straight line in colour space would make the task linear"


def test_assay_oracle_inverts_the_curve_on_flat_colours():
    truth = np.array([80.0, 123.4, 200.0, 277.7, 350.0])
    flat = np.stack([np.broadcast_to(np.rint(assay_colour(c)), (40, 40, 3)) for c in truth]).astype(np.uint8)
    assert np.abs(assay_oracle(flat) - truth).max() < 1.5  # only 8-bit rounding of the colour remains


def test_assay_oracle_rejects_non_image_input():
    with pytest.raises(ShapeError, match=r"expected images \(N, H, W, 3\) uint8 BGR, got \(4, 4, 3\)"):
        assay_oracle(np.zeros((4, 4, 3), dtype=np.uint8))


def test_assay_labels_groups_and_oracle(assay_dir):
    rows = read_labels(assay_dir)
    truth = np.array([float(r["concentration"]) for r in rows])
    groups = [r["group"] for r in rows]
    images = np.stack([read_png(assay_dir, r["path"]) for r in rows])

    assert np.all((truth >= ASSAY_RANGE[0]) & (truth <= ASSAY_RANGE[1]))
    assert len(set(groups)) == len(rows) // 4
    for group in set(groups):
        members = [i for i, g in enumerate(groups) if g == group]
        assert len(members) == 4 and len({truth[i] for i in members}) == 1
        # Four photos of one well: same liquid, but turned/mirrored/lit differently, never identical.
        assert len({images[i].tobytes() for i in members}) == 4

    error = assay_oracle(images) - truth
    baseline = truth - truth.mean()
    rmse = np.sqrt(np.mean(error ** 2))
    assert rmse < 0.2 * np.sqrt(np.mean(baseline ** 2)), "the colour must carry the concentration"
    assert rmse > 0.3, "lighting, noise and well marks must leave the oracle some error"


def test_assay_details_turn_with_the_well(assay_dir):
    """Photos of one sample differ by more than noise, and not by a fixed pattern (the marks move)."""
    rows = read_labels(assay_dir)
    images = [read_png(assay_dir, r["path"]).astype(np.float32) for r in rows[:4]]
    differences = [np.abs(images[0] - other).mean() for other in images[1:]]
    flat = read_png(assay_dir, rows[0]["path"]).astype(np.float32)
    noise_floor = np.abs(flat - cv2.GaussianBlur(flat, (0, 0), 1.0)).mean()
    assert min(differences) > noise_floor


# ---- gravel ------------------------------------------------------------------------------------

def test_gravel_groups_share_one_distribution(gravel_dir):
    rows = read_labels(gravel_dir)
    fractions = np.array([[float(r[f"bin{i}"]) for i in range(5)] for r in rows])
    groups = np.array([r["group"] for r in rows])

    assert np.allclose(fractions.sum(axis=1), 1.0, atol=1e-12) and fractions.min() >= 0
    assert len(set(groups)) == synth.gravel_groups(len(rows))
    distinct = {tuple(f) for f in fractions}
    assert len(distinct) == len(set(groups))
    for group in set(groups):
        assert len({tuple(f) for f in fractions[groups == group]}) == 1


def test_gravel_image_texture_follows_the_size_distribution():
    """Finer gravel has more edges: the label is visible in the image, not just written next to it."""
    bin_centres = np.log(np.sqrt(synth._GRAVEL_BIN_EDGES[:-1] * synth._GRAVEL_BIN_EDGES[1:]))
    mean_log_size, edge_energy = [], []
    for index in range(40):  # the first photo of each of 40 distributions
        image, fractions, _ = synth.render("gravel", index, n=160, size=128)
        gray = cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32), (0, 0), 1.0)
        edges = np.abs(cv2.Laplacian(gray, cv2.CV_32F))[24:104, 24:104]  # inside the tray
        mean_log_size.append(np.dot(fractions, bin_centres))
        edge_energy.append(edges.mean())
    ranks = [np.argsort(np.argsort(v)) for v in (mean_log_size, edge_energy)]
    assert np.corrcoef(*ranks)[0, 1] < -0.4


# ---- box ---------------------------------------------------------------------------------------

def test_box_position_is_rendered_at_sub_pixel_accuracy(box_dir):
    rows = read_labels(box_dir)
    errors = []
    for row in rows:
        gray = read_png(box_dir, row["path"]).astype(np.float32).mean(axis=2)
        weight = np.clip(gray - 185.0, 0, None)  # the box is the only thing brighter than the clutter
        ys, xs = np.mgrid[0:gray.shape[0], 0:gray.shape[1]]
        estimate = np.array([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()
        errors.append(estimate - (float(row["x"]), float(row["y"])))
        centre = (gray.shape[1] - 1) / 2
        quadrant = int(float(row["x"]) >= centre) + 2 * int(float(row["y"]) >= centre)
        assert row["group"] == f"q{quadrant}"
    rmse = np.sqrt(np.mean(np.square(errors)))
    # Boxes drawn at whole pixels would leave ~0.29 px (uniform rounding) per axis.
    assert rmse < 0.2


# ---- pixelstats --------------------------------------------------------------------------------

def test_pixelstats_labels_are_exact_statistics_of_the_saved_pixels(pixelstats_dir):
    rows = read_labels(pixelstats_dir)
    means = []
    for row in rows:
        pixels = read_png(pixelstats_dir, row["path"])
        assert pixels.shape == (28, 28)  # saved as 8-bit gray
        values = pixels.astype(np.float64) / 255.0
        assert float(row["mean"]) == values.mean()
        assert float(row["median"]) == np.median(values)
        assert float(row["std"]) == values.std()
        means.append(values.mean())
    assert np.std(means) > 0.1, "patches must span a wide range of brightness"


# ---- angle -------------------------------------------------------------------------------------

def test_angle_is_counter_clockwise_as_displayed_from_plus_x():
    errors = []
    for index in range(120):
        image, (angle,), _ = synth.render("angle", index, n=120, size=32)
        mask = image.astype(np.float32).mean(axis=2) > 175  # bright arrows only (dark ones sink into clutter)
        if mask.sum() < 30:
            continue
        ys, xs = np.nonzero(mask)
        points = np.stack([xs, ys], axis=1).astype(np.float64)  # (P, 2) x right, y down
        centred = points - points.mean(axis=0)
        axis = np.linalg.eigh(centred.T @ centred)[1][:, 1]  # the arrow's long axis
        along = centred @ axis
        if along.max() > -along.min():  # the wide head pulls the centroid towards the tip
            axis = -axis
        estimate = np.degrees(np.arctan2(-axis[1], axis[0])) % 360  # y down: CCW angle is atan2(-dy, dx)
        errors.append((estimate - angle + 180) % 360 - 180)
        assert 0 <= angle < 360
    assert len(errors) > 30
    assert np.median(np.abs(errors)) < 5


# ---- count -------------------------------------------------------------------------------------

def test_count_label_is_the_number_of_particles_in_the_photo():
    counts = []
    for index in range(40):
        image, (count,), group = synth.render("count", index, n=40)
        gray = image.astype(np.float32).mean(axis=2)  # (S, S)
        size = gray.shape[0]
        yy, xx = np.mgrid[:size, :size]
        dish = np.hypot(xx - (size - 1) / 2, yy - (size - 1) / 2) < 0.42 * size  # inside the rim's blur
        dark = ((gray < 130) & dish).astype(np.uint8)
        n_blobs = cv2.connectedComponents(dark, connectivity=4)[0] - 1  # label 0 is the background
        assert count == n_blobs and count == int(count) and group is None
        counts.append(count)
    assert min(counts) <= 3 and max(counts) >= 15, "counts must span the task's range"


# ---- CLI and dependencies ----------------------------------------------------------------------

def test_cli_synth_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "box"
    assert main(["synth", "box", str(out), "--n", "4", "--size", "24", "--seed", "3"]) == 0
    assert "wrote 4 24x24 box images" in capsys.readouterr().out
    assert len(read_labels(out)) == 4
    assert read_png(out, "images/00003.png").shape == (24, 24, 3)

    assert main(["synth", "box", str(out), "--n", "4"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["synth", "box", str(out), "--n", "2", "--size", "24", "--overwrite"]) == 0


def test_cli_synth_unknown_task_suggests_a_name(tmp_path, capsys):
    assert main(["synth", "gravle", str(tmp_path / "x"), "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'gravel'" in err and "Traceback" not in err


def test_cli_synth_help_lists_every_task(capsys):
    from edgereg.cli.synth import TASK_HELP

    assert list(TASK_HELP) == list(TASKS)
    for task, text in TASK_HELP.items():
        assert text.startswith(f"{TASKS[task].default_size} px")
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(task in text for task in TASKS) and "examples:" in text


def test_cli_synth_rejects_a_non_positive_count(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "box", str(tmp_path), "--n", "0"])
    assert exit_info.value.code == 2
    assert "expected a number >= 1" in capsys.readouterr().err


def test_synth_and_data_run_without_torch(tmp_path, run_without_torch):
    script = f"""
        from edgereg.preprocess import PreprocessConfig
        from edgereg.data.dataset import load_dataset
        from edgereg.training.synth import make_dataset
        make_dataset("box", {str(tmp_path)!r}, n=3, size=16)
        data = load_dataset({str(tmp_path)!r}, config=PreprocessConfig(input_size=(16, 16), crop="none"))
        assert data.images.shape == (3, 16, 16, 3), data.images.shape
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch imported"
        print("OK")
    """
    result = run_without_torch(script)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "OK" in result.stdout
