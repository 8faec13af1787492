"""The batch pipeline and its writers through the public API, on generated good and broken files."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from scoring_files import read_csv

from edgereg import Predictor
from edgereg.batch.encoding import errors_path_for
from edgereg.batch.flags import reading_flags, target_spans
from edgereg.batch.resume import cut_partial_line, load_done_keys
from edgereg.batch.scoring import score_source
from edgereg.batch.shards import Shard
from edgereg.batch.sources import BatchSource, Entry, FolderSource
from edgereg.batch.writers import CsvRowWriter, JsonlRowWriter, open_errors, open_rows
from edgereg.core.rows import prediction_columns
from edgereg.errors import EdgeregError
from edgereg.preprocess import read_image


def make_mixed_folder(root, rng, n_good=9):
    """Good images of several sizes and formats, and one of each kind of broken file.

    Returns (good names in natural order, bad names).
    """
    root.mkdir(parents=True, exist_ok=True)
    good = []
    for i in range(n_good):
        image = rng.integers(0, 256, (20 + 3 * i, 30 + i, 3), dtype=np.uint8)
        name = f"img{i}.{'png' if i % 2 else 'jpg'}"
        cv2.imwrite(str(root / name), image)
        good.append(name)
    cv2.imwrite(str(root / "img20_gray.png"), rng.integers(0, 256, (25, 25), dtype=np.uint8))
    cv2.imwrite(str(root / "img21_rgba.png"), rng.integers(0, 256, (25, 25, 4), dtype=np.uint8))
    cv2.imwrite(str(root / "img22_16bit.png"), rng.integers(0, 65535, (25, 25, 3), dtype=np.uint16))
    good += ["img20_gray.png", "img21_rgba.png", "img22_16bit.png"]
    jpeg = cv2.imencode(".jpg", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))[1].tobytes()
    (root / "bad_truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "bad_zero.png").write_bytes(b"")
    (root / "bad_text.jpg").write_text("this is not an image\n")
    (root / "bad_noise.png").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    (root / "bad_dir.png").mkdir()  # a folder with an image name is listed as an error, not dropped
    return good, ["bad_dir.png", "bad_noise.png", "bad_text.jpg", "bad_truncated.jpg", "bad_zero.png"]


def score_to_csv(source, predictor, out, **kwargs):
    columns = prediction_columns(predictor.names, with_spread=predictor.tta.n > 1)
    with open_rows(out, columns, **{k: kwargs.pop(k) for k in ("resume", "overwrite") if k in kwargs}) as rows, \
            open_errors(out) as errors:
        return score_source(source, predictor, rows, errors, **kwargs)


def test_every_good_image_scored_once_in_order_and_every_bad_one_listed(model_factory, tmp_path, rng):
    good, bad = make_mixed_folder(tmp_path / "imgs", rng)
    model = model_factory(targets=("a", "b"), kind="vector", crop="center")
    predictor = Predictor(model, batch_size=4)
    source = FolderSource(tmp_path / "imgs")
    out = tmp_path / "preds.csv"
    stats = score_to_csv(source, predictor, out, decode_threads=3)
    assert (stats.scored, stats.failed) == (len(good), len(bad))

    rows = read_csv(out)
    order = [e.key for e in source.entries()]
    assert [r["path"] for r in rows] == [k for k in order if k.rsplit("/", 1)[1] in good]
    errors = read_csv(errors_path_for(out))
    assert sorted(r["path"].rsplit("/", 1)[1] for r in errors) == sorted(bad)
    reasons = {r["path"].rsplit("/", 1)[1]: r["reason"] for r in errors}
    assert "empty file" in reasons["bad_zero.png"] and "truncated" in reasons["bad_truncated.jpg"]
    assert not any(r["reason"].startswith("'") for r in errors)  # the path is not repeated

    expected = Predictor(model).predict([read_image(r["path"]) for r in rows]).values
    got = np.array([[float(r["a"]), float(r["b"])] for r in rows])
    # float32 means of 768 normalized pixels summed in another order (batch 4 vs 32, other threads):
    # about sqrt(768) * 1.2e-7 * |x| <= 2 apart, plus the CSV's 7 significant digits
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_shards_partition_the_inputs(model_factory, tmp_path, rng):
    good, _ = make_mixed_folder(tmp_path / "imgs", rng, n_good=7)
    predictor = Predictor(model_factory(), batch_size=3)
    source = FolderSource(tmp_path / "imgs")
    seen = []
    for i in (1, 2, 3):
        out = tmp_path / f"part{i}.csv"
        score_to_csv(source, predictor, out, shard=Shard(i, 3))
        seen += [r["path"] for r in read_csv(out)] + [r["path"] for r in read_csv(errors_path_for(out))]
    all_keys = [e.key for e in source.entries()]
    assert sorted(seen) == sorted(all_keys) and len(seen) == len(set(seen))
    first = [r["path"] for r in read_csv(tmp_path / "part1.csv")]
    assert first == [k for p, k in enumerate(all_keys) if p % 3 == 0 and "bad_" not in k]


@pytest.mark.parametrize("text", ["0/4", "5/4", "1/0", "a/b", "2", "1/2/3"])
def test_shard_parse_rejects_bad_specs(text):
    with pytest.raises(EdgeregError, match="--shard must be i/n"):
        Shard.parse(text)


def test_shard_parse_explains_one_based_numbering():
    assert Shard.parse("4/4") == Shard(4, 4)
    with pytest.raises(EdgeregError, match="numbered from 1"):
        Shard.parse("0/4")


def test_skip_and_fail_fast(model_factory, tmp_path, rng):
    good, bad = make_mixed_folder(tmp_path / "imgs", rng, n_good=4)
    predictor = Predictor(model_factory(), batch_size=2)
    source = FolderSource(tmp_path / "imgs")
    keys = [e.key for e in source.entries()]
    out = tmp_path / "a.csv"
    stats = score_to_csv(source, predictor, out, skip=set(keys[:3]))
    assert [r["path"] for r in read_csv(out)] == [k for k in keys[3:] if "bad_" not in k]
    assert stats.total == len(keys) - 3

    out = tmp_path / "b.csv"
    stats = score_to_csv(source, predictor, out, fail_fast=True)
    first_bad = next(i for i, k in enumerate(keys) if "bad_" in k)
    assert stats.failed == 1 and [r["path"] for r in read_csv(out)] == keys[:first_bad]


class CountingSource(BatchSource):
    """Many tiny generated frames; records how far the producer ran ahead of the writer."""

    def __init__(self, n, rows_written):
        self.n = n
        self.rows_written = rows_written
        self.max_lead = 0
        self.description = f"{n} generated frames"

    def planned_keys(self):
        return [f"f{i}" for i in range(self.n)]

    def entries(self, select=None):
        for i in range(self.n):
            self.max_lead = max(self.max_lead, i - self.rows_written())
            yield Entry(i, f"f{i}", frame=np.full((8, 8, 3), i % 256, np.uint8))


def test_decoded_frames_in_flight_stay_bounded(model_factory, tmp_path):
    predictor = Predictor(model_factory(input_size=(8, 8)), batch_size=4)
    columns = prediction_columns(predictor.names, with_spread=False)
    with CsvRowWriter(tmp_path / "p.csv", columns) as rows:
        source = CountingSource(400, lambda: rows.rows_written)
        stats = score_source(source, predictor, rows, decode_threads=2, queue_size=6)
    assert stats.scored == 400
    assert source.max_lead <= 6 + 4 + 1  # queue + one batch + the entry being put


def test_flags_out_of_range_and_tta_disagreement(model_factory):
    # "mean" model: value = normalized mean = (pixel/255 - 0.5) / 0.25, so white reads 2.0
    bounded = Predictor(model_factory(range=((-2.0, 2.0),), crop="none"))
    frames = [np.full((16, 16, 3), v, np.uint8) for v in (255, 128, 0, 250)]
    result = bounded.predict(frames)
    spans = target_spans(bounded.card, [None] * 4)
    assert reading_flags(bounded.card, result.values, None, spans) == [
        ("out_of_range",), (), ("out_of_range",), ()]

    # "centroid" model read as a plain vector: not invariant under D4, so an off-centre spot disagrees
    centroid = Predictor(model_factory(kind="vector", targets=("u", "v"), range=((0.0, 1.0), (0.0, 1.0)),
                                       fn="centroid", crop="none", mean=(0.1,) * 3, std=(0.5,) * 3, tta="d4"))
    off, centred = np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16, 3), np.uint8)
    cv2.circle(off, (3, 8), 1, (255, 255, 255), -1)
    cv2.circle(centred, (7, 7), 2, (255, 255, 255), -1)
    centred[:, 8:] = centred[:, 7::-1]  # exactly symmetric about the centre
    centred[8:] = centred[7::-1]
    result = centroid.predict([off, centred])
    flags = reading_flags(centroid.card, result.values, result.spread, target_spans(centroid.card, [None] * 2))
    assert "tta_disagreement" in flags[0] and "tta_disagreement" not in flags[1]


def test_flags_not_finite():
    from edgereg.core.card import ModelCard

    card = ModelCard(kind="vector", targets=("a", "b"), input_size=(8, 8))
    values = np.array([[1.0, np.nan], [1.0, 2.0]])
    assert reading_flags(card, values, None, np.full((2, 2), np.nan)) == [("not_finite",), ()]


def test_coords_spans_are_the_crop_sides():
    from edgereg.core.card import ModelCard
    from edgereg.preprocess import CropBox

    card = ModelCard(kind="coords", targets=("x0", "y0", "x1", "y1"), input_size=(8, 8))
    spans = target_spans(card, [CropBox(0, 0, 100, 50), CropBox(5, 5, 20, 40)])
    np.testing.assert_array_equal(spans, [[100, 50, 100, 50], [20, 40, 20, 40]])


# ------------------------------------------------------------------ writers


def test_csv_rows_round_trip_awkward_paths_and_flags(tmp_path):
    columns = prediction_columns(("c",), with_spread=True)
    out = tmp_path / "p.csv"
    with open_rows(out, columns) as rows:
        rows.write({"path": 'a,b "q".png', "c": 1.5, "c_spread": 0.25, "flags": ("out_of_range", "x")})
        rows.write({"path": "ünï.png", "c": float("nan"), "c_spread": 0.0, "flags": ()})
        with pytest.raises(ValueError):
            rows.write({"path": "p", "c": 1.0})
    got = read_csv(out)
    assert got[0] == {"path": 'a,b "q".png', "c": "1.5", "c_spread": "0.25", "flags": "out_of_range;x"}
    assert got[1]["path"] == "ünï.png" and got[1]["c"] == "nan" and got[1]["flags"] == ""
    assert load_done_keys(out, columns) == {'a,b "q".png', "ünï.png"}


def test_jsonl_rows_are_json_with_null_for_non_finite(tmp_path):
    columns = prediction_columns(("c",), with_spread=False)
    out = tmp_path / "p.jsonl"
    with open_rows(out, columns) as rows:
        assert isinstance(rows, JsonlRowWriter)
        rows.write({"path": "a.png", "c": float("inf"), "flags": ("not_finite",)})
    record = json.loads(out.read_text())
    assert record == {"path": "a.png", "c": None, "flags": ["not_finite"]}
    assert load_done_keys(out, columns) == {"a.png"}


def test_existing_output_is_never_replaced_silently(tmp_path):
    columns = ("path", "c", "flags")
    out = tmp_path / "p.csv"
    with open_rows(out, columns) as rows:
        rows.write({"path": "a", "c": 1.0, "flags": ()})
    with pytest.raises(EdgeregError, match="--resume"):
        open_rows(out, columns)
    with open_rows(out, columns, resume=True) as rows:
        rows.write({"path": "b", "c": 2.0, "flags": ()})
    assert [r["path"] for r in read_csv(out)] == ["a", "b"]  # appended, one header
    open_rows(out, columns, overwrite=True).close()
    assert read_csv(out) == []
    with pytest.raises(EdgeregError, match=r"\.csv or \.jsonl"):
        open_rows(tmp_path / "p.txt", columns)


def test_resume_cuts_a_partial_last_line_and_checks_columns(tmp_path):
    out = tmp_path / "p.csv"
    out.write_text("path,c,flags\na.png,1,\nb.png,2,\nc.pn")
    assert cut_partial_line(out) == len("c.pn")
    assert out.read_text().endswith("b.png,2,\n")
    out.write_text("path,c,flags\na.png,1,\nb.png,2")
    assert load_done_keys(out, ("path", "c", "flags")) == {"a.png"}
    with pytest.raises(EdgeregError, match="columns are"):
        load_done_keys(out, ("path", "c", "c_spread", "flags"))
    assert load_done_keys(tmp_path / "missing.csv", ("path",)) == set()
    half_header = tmp_path / "h.csv"
    half_header.write_text("path,c,fl")
    assert load_done_keys(half_header, ("path", "c", "flags")) == set() and half_header.read_text() == ""


def test_errors_file_sits_next_to_the_output():
    assert errors_path_for("out/preds.csv").as_posix() == "out/preds.errors.csv"
    assert errors_path_for("preds.jsonl").as_posix() == "preds.errors.csv"
