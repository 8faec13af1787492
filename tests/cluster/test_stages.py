"""The worker-side stages on their own (no Ray): decode tasks and the ONNX Runtime actor."""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np

from edgereg import Predictor
from edgereg.batch.flags import reading_flags, target_spans
from edgereg.batch.scoring import load_entry
from edgereg.batch.sources import ListFileSource
from edgereg.cluster.engine import block_rows, input_blocks, select_inputs
from edgereg.cluster.stages import OnnxScorer, decode_batch


def as_batch(table):
    """A pyarrow input block as the numpy batch Ray Data hands decode_batch."""
    return {name: column.to_numpy(zero_copy_only=False) for name, column in zip(table.column_names, table.columns)}


def test_decode_then_actor_reads_what_the_predictor_reads_with_tta_and_coords(model_factory, tmp_path, rng):
    model = model_factory(kind="coords", targets=("x", "y"), fn="centroid", crop="center", tta="d4",
                          mean=(0.1,) * 3, std=(0.5,) * 3)
    names = []
    for i in range(5):
        image = np.zeros((30 + 4 * i, 40, 3), np.uint8)
        cv2.circle(image, (10 + 3 * i, 12 + i), 3, (255, 255, 255), -1)
        name = f"spot{i}.png"
        cv2.imwrite(str(tmp_path / name), image)
        names.append(name)
    (tmp_path / "empty.png").write_bytes(b"")
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(names[:2] + ["empty.png", "missing.png"] + names[2:]) + "\n")

    predictor = Predictor(model, batch_size=2)
    entries = select_inputs(ListFileSource(listing))
    (block,) = input_blocks(entries, block_rows(predictor.config.input_size, 3, predictor.tta.n))
    decoded = decode_batch(as_batch(block), config=predictor.config, tta=predictor.tta)
    assert decoded["tensor"].shape == (7, 8, 3, 16, 16) and decoded["tensor"].dtype == np.float32
    expected_reasons = [r if isinstance(r, str) else "" for r in (load_entry(e, predictor.config) for e in entries)]
    assert list(decoded["error"]) == expected_reasons  # worded exactly as the local engine words them
    assert "empty file" in decoded["error"][2] and "file not found" in decoded["error"][3]

    temporary = set(Path(tempfile.gettempdir()).glob("edgereg-*.onnx"))
    scorer = OnnxScorer(model.read_bytes(), card=predictor.card.to_json(), providers="cpu", tta="d4", batch_size=2,
                        threads=1)
    assert set(Path(tempfile.gettempdir()).glob("edgereg-*.onnx")) == temporary  # the model copy is gone
    scored = scorer(decoded)
    good = [0, 1, 4, 5, 6]
    images = [cv2.imread(str(tmp_path / name)) for name in names]
    reference = predictor.predict(images)
    np.testing.assert_array_equal(scored["values"][good], reference.values)  # same kernel, same session
    np.testing.assert_array_equal(scored["spread"][good], reference.spread)
    assert np.isnan(scored["values"][[2, 3]]).all() and list(scored["error"]) == expected_reasons
    flags = reading_flags(predictor.card, reference.values, reference.spread,
                          target_spans(predictor.card, [load_entry(e, predictor.config)[1] for e in
                                                        (entries[i] for i in good)]))
    assert [f for f in scored["flags"][good]] == [";".join(f) for f in flags]
    assert set(scored["provider"]) == {"CPUExecutionProvider"}


def test_predict_tensor_equals_predict_prepared(model_factory, rng):
    from edgereg.preprocess import preprocess_batch

    predictor = Predictor(model_factory(tta="rot:3", crop="none"), batch_size=3)
    frames = rng.integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
    tensor = preprocess_batch(frames, predictor.config, predictor.tta)  # (7*3, 3, 16, 16)
    a, b = predictor.predict_prepared(frames), predictor.predict_tensor(tensor)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.spread, b.spread)


def test_the_actor_returns_interval_bounds_and_lab_flags(model_factory, tmp_path):
    """With intervals in the card, the actor's rows carry _lo/_hi and the lab flags, as the local engine's."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lab"))
    from lab_cards import lab_sections

    from edgereg.cluster.engine import make_row

    model = model_factory(kind="scalar", targets=("conc",), input_size=(16, 16), crop="none", **lab_sections())
    names = []
    for gray in (0, 128, 255):
        cv2.imwrite(str(tmp_path / f"g{gray}.png"), np.full((16, 16, 3), gray, np.uint8))
        names.append(f"g{gray}.png")
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")
    predictor = Predictor(model)
    entries = select_inputs(ListFileSource(tmp_path / "list.txt"))
    (block,) = input_blocks(entries, block_rows(predictor.config.input_size, 3, predictor.tta.n))
    decoded = decode_batch(as_batch(block), config=predictor.config, tta=predictor.tta)
    scored = OnnxScorer(Path(model).read_bytes(), card=predictor.card.to_json(), providers="cpu", tta="none",
                        batch_size=2, threads=1)(decoded)
    expected = predictor.predict([np.full((16, 16, 3), g, np.uint8) for g in (0, 128, 255)])
    np.testing.assert_allclose(scored["lo"], expected.lo, rtol=1e-6)
    np.testing.assert_allclose(scored["hi"], expected.hi, rtol=1e-6)
    assert "below_lob" in scored["flags"][0] and "above_range" in scored["flags"][2]
    row = make_row("g0.png", predictor.names, scored["values"][0], None, ("below_lob",), scored["lo"][0],
                   scored["hi"][0])
    assert list(row) == ["path", "conc", "conc_lo", "conc_hi", "flags"]
