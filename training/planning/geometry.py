"""How images are cropped, sized and coloured at load time, and the crop the model is trained with.

:func:`loading_geometry` fixes what every image is decoded to once (crop, size, channels);
:func:`model_crop` decides whether the model sees the loaded square as is or behind a circle mask
(:func:`corners_are_background`: the round-sample test on the probed thumbnails).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgereg.core.kinds import target_kind
from edgereg.preprocess import PreprocessConfig
from edgereg.preprocess.reference import circle_mask
from edgereg.training.config import TrainConfig
from edgereg.training.planning.input_size import choose_input_size
from edgereg.training.planning.probe import SourceProbe, coords_by_name
from edgereg.training.targets.kind_training import kind_training

ROUND_SAMPLE_RATIO = 0.5  # corners this much calmer than the inscribed disk: a round sample on a plain ground


def corners_are_background(thumbs) -> tuple[bool, str]:
    """Whether the corners outside the inscribed circle look like plain background.

    A circle mask (and with it arbitrary-angle rotation augmentation) is only honest when the
    corners carry no signal: a well on a plate, a tray on a bench. Texture photos and patches keep
    their corners. The test: the median over the probed images of (std of the corner pixels) /
    (std of the pixels inside the circle) must be below 0.5.

    Args:
        thumbs: (64, 64) float32 gray centre squares of some images.

    Returns:
        (verdict, one line saying why).
    """
    if not thumbs:
        return False, "no image could be probed"
    inside = circle_mask(64, 64)
    ratios = [float(t[~inside].std() / max(t[inside].std(), 1e-6)) for t in thumbs]
    ratio = float(np.median(ratios))
    verdict = ratio < ROUND_SAMPLE_RATIO
    return verdict, (f"corner/centre contrast {ratio:.2f} {'<' if verdict else '>='} {ROUND_SAMPLE_RATIO}: the "
                     f"corners {'look like plain background' if verdict else 'carry image content'}")



def loading_geometry(probe: SourceProbe, config: TrainConfig, *, fit_seconds: float | None = None,
                     model_name: str = "cnn_small", log: Callable[[str], None] = print
                     ) -> tuple[PreprocessConfig, str]:
    """How images are cropped and resized once, at load time (normalization comes later), and why.

    Coords keep the whole frame so every position stays visible; other kinds take the centred
    square (the whole image when it is square). The size is :func:`choose_input_size`'s. The
    user's --size/--crop/--channels/--roi win.
    """
    wants_coords = (target_kind(config.kind).xy_points if config.kind is not None
                    else coords_by_name(probe.header))
    if config.crop is not None:
        crop = "center" if config.crop == "circle" else config.crop  # the circle is a mask, applied later
    else:
        crop = "none" if wants_coords or probe.small_native else "center"
    kind = "coords" if wants_coords else (config.kind or "scalar")
    if config.model and config.model != "auto":
        model_name = config.model
    elif wants_coords:
        model_name = "heatmap_small"
    size, reason = choose_input_size(probe, config, crop=crop, kind=kind, model_name=model_name,
                                     fit_seconds=fit_seconds, log=log)
    channels = config.channels or ("gray" if probe.gray else "rgb")
    n = 1 if channels == "gray" else 3
    # decode="reduced": big JPEGs are decoded at 1/2..1/8 size, as the runtime will (preprocess.frames)
    geometry = PreprocessConfig(input_size=(int(size[0]), int(size[1])), channels=channels, crop=crop,
                                roi=None if config.roi is None else tuple(config.roi), mean=(0.5,) * n,
                                std=(0.25,) * n, decode="reduced")
    return geometry, reason


def model_crop(kind: str, geometry: PreprocessConfig, config: TrainConfig, probe: SourceProbe | None = None
               ) -> tuple[str, str]:
    """The crop the model is trained and deployed with, and why.

    A circle mask (with arbitrary rotation as an honest augmentation) only for round samples: the
    kind's targets must not depend on orientation (scalar, distribution, angle), the input must be
    square, and :func:`corners_are_background` must find plain corners. Everything else keeps the
    whole loaded square or frame.
    """
    if config.crop is not None:
        return config.crop, "asked for with --crop"
    height, width = geometry.input_size
    if kind_training(kind).round_crop and height == width and config.invariance != "none":
        round_sample, why = corners_are_background(probe.thumbs if probe is not None else ())
        if round_sample:
            return "circle", why
        return geometry.crop, why
    return geometry.crop, f"kind {kind} keeps the {'whole frame' if geometry.crop == 'none' else 'centre square'}"

