"""Which rows fit the novelty score and which set its threshold, for ``edgereg export``.

* The mean and precision come from the rows the shipped model was trained on (run.json's train
  split, or ``refit_rows`` after a refit).
* The threshold comes from rows neither the model nor the mean saw: the validation and test rows
  when the model was not refitted on them. A refitted model trained on every row: its training
  rows are divided by group (by row without groups), the mean fitted on about 70% and the
  threshold set on the other 30%, which the mean never saw but the network did (features of
  photos a network trained on sit a little closer to the others than a new photo's, so a little
  more than ``rate`` of new familiar photos may be flagged: measured in docs/changes-intervals.md).
* The int8 quantizer and its search see the regression graph alone (:func:`value_only_copy`), and
  the int8 model ships without a novelty output in this version (grafting the float branch back
  broke the analysis of the int8 graph's float tail that the C backend's checks rely on).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgereg.core.card import INPUT_NAME, NOVELTY_NAME, ModelCard
from edgereg.export.uncertainty.novelty import (
    MIN_THRESHOLD_ROWS,
    ShrinkageFit,
    fit_shrinkage,
    novelty_section,
    threshold,
)

FIT_SHARE = 0.7  # of a refitted model's rows: the mean's part (the rest sets the threshold)


@dataclass(frozen=True)
class NoveltyPlan:
    """A fitted novelty head and the held-out images its threshold is set on.

    Attributes:
        head: ``edgereg.training.targets.regressor.NoveltyHead`` to export.
        fit: the ShrinkageFit behind it.
        frames: (n, H, W, 3) uint8 threshold images (cropped and resized).
        preprocess: the run's PreprocessConfig.
        rate: the false-alarm rate.
        fitted_on, threshold_rows: sentences for the card.
        features: D.
    """

    head: object
    fit: ShrinkageFit
    frames: np.ndarray
    preprocess: object
    rate: float
    fitted_on: str
    threshold_rows: str
    features: int

    def scores(self, model_path: str | Path) -> np.ndarray:
        """(n,) float64 novelty outputs of ``model_path`` on the threshold images."""
        import onnxruntime as ort

        from edgereg.preprocess import preprocess_batch

        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        out = []
        for start in range(0, len(self.frames), 64):
            tensor = preprocess_batch(self.frames[start:start + 64], self.preprocess)
            out.append(session.run([NOVELTY_NAME], {INPUT_NAME: tensor})[0][:, 0])
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)

    def card_for(self, model_path: str | Path, card: ModelCard) -> ModelCard:
        """``card`` with this model's novelty section (its own threshold), written into the file."""
        from edgereg.export.card_io import write_card

        scores = self.scores(model_path)
        section = novelty_section(self.fit, threshold(scores, self.rate), rate=self.rate, n_threshold=len(scores),
                                  fitted_on=self.fitted_on, threshold_rows=self.threshold_rows,
                                  features=self.features)
        new_card = card.with_(novelty=section)
        write_card(model_path, new_card)
        return new_card


def value_only_copy(fp32_path: str | Path, out_path: str | Path) -> Path:
    """The fp32 model without its novelty branch (card kept), for the int8 quantizer: the int8
    search then sees the regression graph alone."""
    import onnx

    from edgereg.export.c.codegen import value_only

    onnx.save(value_only(onnx.load(str(fp32_path))), str(out_path))
    return Path(out_path)


def plan_novelty(regressor, dataset, info, *, rate: float) -> NoveltyPlan:
    """Fit the head on the shipped model's training rows and choose the threshold rows (module docstring)."""
    from edgereg.preprocess import preprocess_batch
    from edgereg.training.targets.regressor import NoveltyHead, embed

    split = info.split
    refit = info.record.get("refit_rows")
    trained = np.asarray(refit if refit is not None else split.train, np.int64)
    untouched = np.setdiff1d(np.concatenate([np.asarray(split.val, np.int64), np.asarray(split.test, np.int64)]),
                             trained)
    seed = int(info.card.provenance.get("seed") or 0)
    if len(untouched) >= MIN_THRESHOLD_ROWS:
        fit_rows, held = trained, untouched
        fitted_on = f"the {len(trained)} training rows"
        where = f"{len(held)} validation/test rows the model never trained on"
    else:
        units = np.asarray(dataset.groups)[trained] if dataset.groups is not None else trained
        names = np.unique(units)
        chosen = np.random.default_rng(seed).permutation(names)[: max(1, int(round(FIT_SHARE * len(names))))]
        in_fit = np.isin(units, chosen)
        if in_fit.all() or not in_fit.any():  # one group: divide by row
            in_fit = np.random.default_rng(seed).random(len(trained)) < FIT_SHARE
        fit_rows, held = trained[in_fit], trained[~in_fit]
        fitted_on = f"{len(fit_rows)} of the training rows ({'groups' if dataset.groups is not None else 'rows'})"
        where = (f"the other {len(held)} training rows (the mean never saw them; the refitted network did)")
    images = lambda rows: preprocess_batch(dataset.images[rows], info.preprocess)  # noqa: E731
    features = embed(regressor, images(fit_rows))
    fit = fit_shrinkage(features, seed=seed)
    head = NoveltyHead(fit.mean, fit.basis, fit.weights, fit.rest)
    return NoveltyPlan(head=head, fit=fit, frames=dataset.images[held], preprocess=info.preprocess, rate=rate,
                       fitted_on=fitted_on, threshold_rows=where, features=features.shape[1])


__all__ = ["NoveltyPlan", "plan_novelty", "value_only_copy"]
