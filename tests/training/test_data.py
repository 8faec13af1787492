"""Loading datasets: preprocessing, target kinds, coordinate conversion, bad rows and the disk cache."""

from __future__ import annotations

import dataclasses
import os
import shutil

import cv2
import numpy as np
import pytest

from edgereg.data.dataset import CACHE_DIR, default_range, infer_kind, load_dataset
from edgereg.errors import DatasetError, ShapeError
from edgereg.preprocess import PreprocessConfig, crop_resize, read_image

CIRCLE_32 = PreprocessConfig(input_size=(32, 32), crop="circle")
WHOLE_16 = PreprocessConfig(input_size=(16, 16), crop="none")


def write_dataset(root, header, rows, *, images=None):
    """Write labels.csv (header and rows as lists of cells) and images {relative path: array}."""
    root.mkdir(parents=True, exist_ok=True)
    for relative, image in (images or {}).items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        ok, data = cv2.imencode(os.path.splitext(relative)[1], image)
        (root / relative).write_bytes(data.tobytes())
    lines = [",".join(header)] + [",".join(str(c) for c in row) for row in rows]
    (root / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def solid(value, shape=(12, 12, 3)):
    return np.full(shape, value, dtype=np.uint8)


# ---- loading the synthetic datasets -------------------------------------------------------------

def test_load_assay_crops_like_the_runtime(assay_dir):
    data = load_dataset(assay_dir, config=CIRCLE_32, cache=False)

    assert data.images.shape == (48, 32, 32, 3) and data.images.dtype == np.uint8
    assert data.targets.shape == (48, 1) and data.targets.dtype == np.float64
    assert data.names == ("concentration",) and data.kind == "scalar"
    assert data.groups is not None and data.groups.shape == (48,) and len(set(data.groups)) == 12
    assert data.skipped == () and len(data) == 48 and not data.from_cache
    for i in (0, 17, 47):
        expected, box = crop_resize(read_image(assay_dir / data.paths[i]), CIRCLE_32)
        np.testing.assert_array_equal(data.images[i], expected)
        np.testing.assert_array_equal(data.crop_boxes[i], box.as_array())


def test_kinds_of_the_synthetic_tasks(gravel_dir, box_dir, pixelstats_dir, angle_dir):
    config = PreprocessConfig(input_size=(16, 16), crop="none")
    kinds = {name: load_dataset(root, config=config, cache=False).kind
             for name, root in [("gravel", gravel_dir), ("box", box_dir), ("pixelstats", pixelstats_dir),
                                ("angle", angle_dir)]}
    assert kinds == {"gravel": "distribution", "box": "coords", "pixelstats": "vector", "angle": "angle"}


def test_pixelstats_targets_match_the_loaded_pixels(pixelstats_dir):
    data = load_dataset(pixelstats_dir, config=PreprocessConfig(input_size=(28, 28), crop="none"), cache=False)
    values = data.images[:, :, :, 0].astype(np.float64) / 255.0  # gray PNG -> B = G = R
    np.testing.assert_allclose(data.targets[:, 0], values.mean(axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(data.targets[:, 2], values.std(axis=(1, 2)), rtol=1e-12)


def test_choosing_targets_changes_the_kind(pixelstats_dir):
    data = load_dataset(pixelstats_dir, config=WHOLE_16, targets=["median"], cache=False)
    assert data.names == ("median",) and data.kind == "scalar" and data.targets.shape == (64, 1)
    data = load_dataset(pixelstats_dir, config=WHOLE_16, targets="std,mean", cache=False)
    assert data.names == ("std", "mean") and data.kind == "vector"


def test_unknown_target_suggests_a_column(pixelstats_dir):
    with pytest.raises(DatasetError, match=r"unknown target column 'medain' \(did you mean 'median'\?\)"):
        load_dataset(pixelstats_dir, config=WHOLE_16, targets=["medain"])


def test_threads_do_not_change_the_result(angle_dir):
    one = load_dataset(angle_dir, config=WHOLE_16, threads=1, cache=False)
    three = load_dataset(angle_dir, config=WHOLE_16, threads=3, cache=False)
    np.testing.assert_array_equal(one.images, three.images)
    np.testing.assert_array_equal(one.targets, three.targets)
    assert one.fingerprint == three.fingerprint


def test_subset_keeps_rows_aligned(gravel_dir):
    data = load_dataset(gravel_dir, config=WHOLE_16, cache=False)
    part = data.subset([5, 2, 40])
    assert len(part) == 3 and part.paths == (data.paths[5], data.paths[2], data.paths[40])
    np.testing.assert_array_equal(part.images[1], data.images[2])
    np.testing.assert_array_equal(part.targets[2], data.targets[40])
    assert list(part.groups) == [data.groups[5], data.groups[2], data.groups[40]]


# ---- coordinates --------------------------------------------------------------------------------

def test_coords_are_mapped_through_each_crop_box(tmp_path):
    """Frames of different shapes, centre-cropped: u = (x - x0 + 0.5) / w, and back."""
    frames = {"a.png": (40, 60), "b.png": (60, 40), "c.png": (30, 30)}  # (H, W)
    points = {"a.png": (30.0, 5.25), "b.png": (7.5, 44.0), "c.png": (0.0, 29.0)}
    images = {}
    for name, (h, w) in frames.items():
        image = solid(30, (h, w, 3))
        x, y = points[name]
        image[int(y), int(x)] = 255
        images[name] = image
    rows = [[name, points[name][1], points[name][0]] for name in frames]  # y before x in the csv
    root = write_dataset(tmp_path / "pts", ["path", "y", "x"], rows, images=images)
    config = PreprocessConfig(input_size=(20, 20), crop="center")

    data = load_dataset(root, config=config, cache=False)

    assert data.kind == "coords" and data.names == ("x", "y")  # reordered: x then y
    for i, name in enumerate(data.paths):
        h, w = frames[name]
        side = min(h, w)
        x0, y0 = (w - side) // 2, (h - side) // 2
        x, y = points[name]
        np.testing.assert_allclose(data.targets[i], [(x - x0 + 0.5) / side, (y - y0 + 0.5) / side])
    np.testing.assert_allclose(data.source_targets(), [points[name] for name in data.paths])


def test_box_coords_round_trip_through_the_crop(box_dir):
    data = load_dataset(box_dir, config=PreprocessConfig(input_size=(16, 16), crop="none"), cache=False)
    assert np.all((data.targets > 0) & (data.targets < 1))
    raw = np.loadtxt(box_dir / "labels.csv", delimiter=",", skiprows=1, usecols=(1, 2))
    np.testing.assert_allclose(data.source_targets(), raw, atol=1e-9)


# ---- target kinds and ranges --------------------------------------------------------------------

@pytest.mark.parametrize("names, rows, kind", [
    (["a", "b", "c"], [[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]], "distribution"),
    (["a", "b"], [[0.2, 0.9], [0.5, 0.5]], "vector"),  # a row that does not sum to 1
    (["a", "b"], [[-0.5, 1.5], [0.5, 0.5]], "vector"),  # negative values
    (["x", "y"], [[3.0, 4.0], [10.0, 1.0]], "coords"),
    (["tip_x", "tip_y", "base_x", "base_y"], [[1, 2, 3, 4]], "coords"),
    (["tip_x", "tip_y", "base_x"], [[1, 2, 3]], "vector"),  # an unpaired x
    (["angle"], [[10.0], [350.0]], "angle"),
    (["heading_deg"], [[10.0]], "angle"),
    (["Orientation"], [[10.0]], "angle"),
    (["concentration"], [[80.0], [350.0]], "scalar"),
    (["mean", "median", "std"], [[0.2, 0.3, 0.1]], "vector"),
])
def test_infer_kind(names, rows, kind):
    inferred, reason = infer_kind(names, np.array(rows, dtype=np.float64))
    assert inferred == kind
    assert isinstance(reason, str) and reason


@pytest.mark.parametrize("header, coords", [
    (["path", "x", "y", "z"], False),  # a 3-vector: the planner once read coords from its x, y
    (["path", "x", "Y"], False),  # not a pair: each pair keeps one case
    (["path", "x", "y"], True),
    (["path", "X", "Y", "group"], True),
    (["path", "a_x", "a_y", "b_x", "b_y"], True),
])
def test_planner_and_loader_agree_on_coords(tmp_path, header, coords):
    from edgereg.training.planning.probe import coords_by_name, probe_sources

    n_targets = len([name for name in header if name not in ("path", "group")])
    rows = [[f"{i}.png", *[1 + i + 2 * j for j in range(n_targets)], *(["g"] if "group" in header else [])]
            for i in range(3)]
    root = write_dataset(tmp_path / "data", header, rows, images={f"{i}.png": solid(60 * i + 20) for i in range(3)})
    loaded = load_dataset(root, config=WHOLE_16, cache=False)
    assert (loaded.kind == "coords") == coords
    assert coords_by_name(probe_sources(root).header) == coords


def test_forced_kind_is_checked(gravel_dir, pixelstats_dir):
    assert load_dataset(gravel_dir, config=WHOLE_16, kind="vector", cache=False).kind == "vector"
    with pytest.raises(DatasetError, match="kind 'distribution' needs non-negative rows that sum to 1; labels.csv"):
        load_dataset(pixelstats_dir, config=WHOLE_16, kind="distribution", cache=False)
    with pytest.raises(DatasetError, match="kind 'scalar' needs exactly one target column, got 3"):
        load_dataset(pixelstats_dir, config=WHOLE_16, kind="scalar", cache=False)
    with pytest.raises(DatasetError, match="did you mean 'scalar'"):
        load_dataset(pixelstats_dir, config=WHOLE_16, kind="scaler", cache=False)


def test_angles_are_wrapped_to_0_360(tmp_path):
    root = write_dataset(tmp_path / "a", ["path", "angle"], [["a.png", -90], ["b.png", 725.5]],
                         images={"a.png": solid(10), "b.png": solid(20)})
    data = load_dataset(root, config=WHOLE_16, cache=False)
    np.testing.assert_allclose(data.targets[:, 0], [270.0, 5.5])


def test_default_range_widens_five_percent():
    assert default_range([80.0, 350.0]) == pytest.approx((66.5, 363.5))
    assert default_range(np.array([2.0, 2.0])) == pytest.approx((1.9, 2.1))
    with pytest.raises(ShapeError):
        default_range(np.zeros((4, 2)))
    with pytest.raises(DatasetError):
        default_range([1.0, float("nan")])


# ---- bad input ---------------------------------------------------------------------------------

@pytest.fixture
def messy_dir(tmp_path):
    """Two good rows among one of each kind of bad row."""
    images = {f"img/{i}.png": solid(40 * i) for i in range(6)}
    root = write_dataset(tmp_path / "messy", ["path", "value", "group"], [
        ["img/0.png", 1.0, "g0"],       # line 2: good
        ["img/missing.png", 2.0, "g0"],  # line 3: no such file
        ["img/1.png", "abc", "g1"],     # line 4: non-numeric
        ["img/2.png", "", "g1"],        # line 5: missing target
        ["img/3.png", 3.0, "g1", "x"],  # line 6: a field too many
        ["img/4.png", 4.0, "g2"],       # line 7: undecodable (overwritten below)
        [],                             # line 8: blank, ignored
        ["img/5.png", 5.0, ""],         # line 9: empty group
        ["img/0.png", "inf", "g3"],     # line 10: non-finite
        ["img/1.png", 6.0, "g3"],       # line 11: good
    ], images=images)
    (root / "img/4.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image IEND")
    return root


def test_bad_rows_are_skipped_with_line_and_reason(messy_dir):
    data = load_dataset(messy_dir, config=WHOLE_16, cache=False)

    assert data.paths == ("img/0.png", "img/1.png")
    np.testing.assert_array_equal(data.targets[:, 0], [1.0, 6.0])
    assert list(data.groups) == ["g0", "g3"]
    lines = [line for line, _, _ in data.skipped]
    assert lines == [3, 4, 5, 6, 7, 9, 10]
    reasons = dict((line, reason) for line, _, reason in data.skipped)
    assert reasons[3] == "file not found"
    assert reasons[4] == "non-numeric target 'value': 'abc'"
    assert reasons[5] == "missing target 'value'"
    assert reasons[6] == "expected 3 fields (header), got 4"
    assert "decodable" in reasons[7] or "corrupt" in reasons[7]
    assert reasons[9].startswith("empty 'group'")
    assert reasons[10] == "non-finite target 'value': 'inf'"


def test_strict_raises_on_the_first_bad_row(messy_dir):
    with pytest.raises(DatasetError, match=r"labels.csv line 3, 'img/missing.png': file not found .*--strict"):
        load_dataset(messy_dir, config=WHOLE_16, strict=True)


def test_strict_reports_undecodable_images(tmp_path):
    root = write_dataset(tmp_path / "d", ["path", "v"], [["a.png", 1], ["b.png", 2]], images={"a.png": solid(9)})
    (root / "b.png").write_bytes(b"GIF89a garbage")
    with pytest.raises(DatasetError, match="line 3, 'b.png'"):
        load_dataset(root, config=WHOLE_16, strict=True)
    assert load_dataset(root, config=WHOLE_16).skipped[0][:2] == (3, "b.png")  # now cached
    with pytest.raises(DatasetError, match="line 3, 'b.png'"):
        load_dataset(root, config=WHOLE_16, strict=True)  # the cached failure is still fatal


def test_no_usable_row_names_the_fix(tmp_path):
    root = write_dataset(tmp_path / "none", ["path", "v"], [["gone.png", 1.0]])
    with pytest.raises(DatasetError, match=r"no usable rows .*1 row\(s\) skipped .*file not found.*fix the paths"):
        load_dataset(root, config=WHOLE_16)


@pytest.mark.parametrize("header, message", [
    (["file", "v"], "has no 'path' column"),
    (["path", "group"], "has no target columns"),
    (["path", "v", "v"], "repeats column"),
])
def test_bad_headers(tmp_path, header, message):
    root = write_dataset(tmp_path / "h", header, [["a.png", 1, 2][:len(header)]], images={"a.png": solid(1)})
    with pytest.raises(DatasetError, match=message):
        load_dataset(root, config=WHOLE_16)


def test_missing_dataset_and_missing_labels(tmp_path):
    with pytest.raises(DatasetError, match="dataset not found"):
        load_dataset(tmp_path / "nowhere", config=WHOLE_16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="has no labels.csv"):
        load_dataset(tmp_path / "empty", config=WHOLE_16)


def test_a_csv_path_and_its_folder_load_the_same(tmp_path):
    root = write_dataset(tmp_path / "d", ["path", "v"], [["a.png", 1]], images={"a.png": solid(5)})
    by_folder = load_dataset(root, config=WHOLE_16, cache=False)
    by_file = load_dataset(root / "labels.csv", config=WHOLE_16, cache=False)
    assert by_folder.fingerprint == by_file.fingerprint
    np.testing.assert_array_equal(by_folder.images, by_file.images)


# ---- the disk cache -----------------------------------------------------------------------------

@pytest.fixture
def bmp_dir(tmp_path):
    """A dataset of BMP files: same-size rewrites keep the file size, so only the mtime can tell."""
    images = {f"{i}.bmp": solid(20 * i, (16, 16, 3)) for i in range(4)}
    return write_dataset(tmp_path / "bmp", ["path", "v"], [[f"{i}.bmp", i] for i in range(4)], images=images)


def test_second_load_reads_the_cache(bmp_dir):
    first = load_dataset(bmp_dir, config=WHOLE_16)
    cache_file = bmp_dir / CACHE_DIR / f"{first.fingerprint}.npz"
    assert cache_file.is_file() and not first.from_cache

    # Rewrite an image with other pixels but the same size and mtime: only a cache can still
    # return the old pixels.
    target = bmp_dir / "2.bmp"
    stat = target.stat()
    cv2.imwrite(str(target), solid(250, (16, 16, 3)))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert target.stat().st_size == stat.st_size

    second = load_dataset(bmp_dir, config=WHOLE_16)
    assert second.from_cache and second.fingerprint == first.fingerprint
    np.testing.assert_array_equal(second.images, first.images)
    assert second.images[2].max() == 40
    np.testing.assert_array_equal(second.targets, first.targets)
    assert second.names == first.names and second.kind == first.kind and second.paths == first.paths


def test_changed_image_invalidates_the_cache(bmp_dir):
    first = load_dataset(bmp_dir, config=WHOLE_16)
    target = bmp_dir / "1.bmp"
    cv2.imwrite(str(target), solid(200, (16, 16, 3)))
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # as if saved later

    second = load_dataset(bmp_dir, config=WHOLE_16)
    assert not second.from_cache and second.fingerprint != first.fingerprint
    assert second.images[1].min() == 200


def test_normalization_does_not_enter_the_fingerprint(bmp_dir):
    first = load_dataset(bmp_dir, config=WHOLE_16)
    other_stats = dataclasses.replace(WHOLE_16, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5), fill=1.0)
    second = load_dataset(bmp_dir, config=other_stats)
    assert second.from_cache and second.fingerprint == first.fingerprint and second.config == other_stats


def test_changed_preprocessing_or_labels_miss_the_cache(bmp_dir):
    first = load_dataset(bmp_dir, config=WHOLE_16)
    other = load_dataset(bmp_dir, config=PreprocessConfig(input_size=(8, 8), crop="none"))
    assert not other.from_cache and other.fingerprint != first.fingerprint and other.images.shape[1:3] == (8, 8)
    text = (bmp_dir / "labels.csv").read_text().replace("3.bmp,3", "3.bmp,30")
    (bmp_dir / "labels.csv").write_text(text)
    relabelled = load_dataset(bmp_dir, config=WHOLE_16)
    assert not relabelled.from_cache and relabelled.targets[3, 0] == 30


def test_cache_keeps_decode_failures_and_rechecks_the_csv(messy_dir):
    first = load_dataset(messy_dir, config=WHOLE_16)
    second = load_dataset(messy_dir, config=WHOLE_16)
    assert second.from_cache and second.skipped == first.skipped and len(second.skipped) == 7
    with pytest.raises(DatasetError, match="line 3"):
        load_dataset(messy_dir, config=WHOLE_16, strict=True)


def test_unwritable_cache_folder_just_skips_caching(bmp_dir):
    (bmp_dir / CACHE_DIR).write_text("a file where the cache folder would go")
    first = load_dataset(bmp_dir, config=WHOLE_16)
    second = load_dataset(bmp_dir, config=WHOLE_16)
    assert not first.from_cache and not second.from_cache
    np.testing.assert_array_equal(first.images, second.images)


def test_corrupt_cache_file_is_rebuilt(bmp_dir):
    first = load_dataset(bmp_dir, config=WHOLE_16)
    cache_file = bmp_dir / CACHE_DIR / f"{first.fingerprint}.npz"
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    second = load_dataset(bmp_dir, config=WHOLE_16)
    assert not second.from_cache
    np.testing.assert_array_equal(first.images, second.images)
    assert load_dataset(bmp_dir, config=WHOLE_16).from_cache  # rewritten whole


def test_cache_survives_moving_the_dataset(bmp_dir, tmp_path):
    first = load_dataset(bmp_dir, config=WHOLE_16)
    moved = tmp_path / "moved"
    shutil.copytree(bmp_dir, moved, copy_function=shutil.copy2)  # copy2 keeps mtimes
    second = load_dataset(moved, config=WHOLE_16)
    assert second.from_cache and second.root == moved
    assert second.image_paths()[0] == moved / "0.bmp"
    np.testing.assert_array_equal(second.images, first.images)


def _jpeg_dataset(root, n=6, size=(240, 320)):
    """labels.csv + n smooth JPEGs of ``size`` (H, W) with a bright disc whose x is the target."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    lines = ["path,x,y"]
    for i in range(n):
        image = cv2.GaussianBlur(rng.integers(0, 256, (*size, 3), dtype=np.uint8), (0, 0), 2)
        x, y = 60 + 30 * i, size[0] // 2 + 5 * i
        cv2.circle(image, (x, y), 12, (250, 250, 250), -1)
        cv2.imwrite(str(root / f"{i}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        lines.append(f"{i}.jpg,{x},{y}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("crop", ["center", "none"])
def test_training_sees_the_pixels_deployment_decodes(tmp_path, crop):
    """Training loads JPEGs with the runtime's reduced decode: identical frames and crop boxes."""
    from edgereg.preprocess import read_frame
    from edgereg.preprocess.frames import load_frame

    root = _jpeg_dataset(tmp_path / "jpegs")
    config = PreprocessConfig(input_size=(32, 32), crop=crop, decode="reduced")
    dataset = load_dataset(root, config=config, cache=False)
    full = load_dataset(root, config=dataclasses.replace(config, decode="full"), cache=False)
    assert dataset.fingerprint != full.fingerprint, "the decode policy must key the cache"
    for i, path in enumerate(dataset.image_paths()):
        frame, box = read_frame(path, config)  # what `edgereg infer` and Predictor.predict_paths decode
        np.testing.assert_array_equal(dataset.images[i], frame)
        np.testing.assert_array_equal(dataset.crop_boxes[i], box.as_array())
        np.testing.assert_array_equal(load_frame(path.read_bytes(), config)[0], frame)
    # the 240-pixel crop is >= 4x the 32-pixel input: decoded at 1/4 (pixels close to, not equal to, full)
    difference = np.abs(dataset.images.astype(int) - full.images.astype(int))
    assert difference.max() > 0 and difference.mean() < 3.0


def test_full_decode_keeps_the_fingerprint_runs_recorded_before_the_decode_policy(tmp_path):
    """A run trained before the card had `decode` must still find its dataset (same fingerprint)."""
    import hashlib
    import json as json_module

    root = _jpeg_dataset(tmp_path / "jpegs", n=2)
    config = PreprocessConfig(input_size=(32, 32), crop="center")  # decode="full", the default
    dataset = load_dataset(root, config=config, cache=False)
    csv_bytes = (root / "labels.csv").read_bytes()
    digest = hashlib.sha256(b"edgereg-dataset-v1\n")  # the fingerprint as computed before the policy
    digest.update(csv_bytes)
    for name in ("0.jpg", "1.jpg"):
        info = (root / name).stat()
        digest.update(f"\n{name}\t{info.st_size}\t{info.st_mtime_ns}".encode())
    geometry = {"input_size": [32, 32], "crop": "center", "roi": None}
    digest.update(json_module.dumps({"targets": ["x", "y"], "kind": None, "geometry": geometry},
                                    sort_keys=True).encode())
    assert dataset.fingerprint == digest.hexdigest()
