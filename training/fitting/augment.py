"""The training-time image pipeline: uint8 batch -> kind-aware augmentation -> normalized model input.

Everything here works on whole batches of torch tensors (no per-sample Python loops):

* :func:`to_float_batch` lays a ``(B, H, W, 3) uint8 BGR`` batch out as ``(B, 3, H, W) float32`` in the
  0..255 range, still BGR.
* :func:`augment_batch` applies one random geometric warp per image (rotation, horizontal flip,
  translation; one ``grid_sample`` call) and photometric jitter, and moves ``coords`` and ``angle``
  targets with the image. Geometry follows CONTRACTS.md: a rotation by t is display-counter-clockwise
  about ((W-1)/2, (H-1)/2) and output pixel (x, y) samples the source at
  ``xs = cx + cos t (x - cx) - sin t (y - cy)``, ``ys = cy + sin t (x - cx) + cos t (y - cy)``
  (exactly the runtime's ``rot:N`` TTA view), border-clamped.
* :func:`to_model_input` is the torch twin of :func:`edgereg.preprocess.preprocess_batch` (BGR->RGB or
  gray, ``pixel * scale + offset``, circle mask): with no augmentation both give the same tensor
  (a test holds them equal to 1e-6), so training sees what deployment sees.

Photometric jitter is off by default: the seeds' targets are read from intensity (a concentration
from a colour, pixel statistics), and brightness or gamma changes move those targets. The lighting
preset (per-channel gain, an illumination gradient) is switched on when the model reads colours
relative to a reference region (``--reference``), which makes it learn ratios that survive
white-balance and exposure drift. It has no gamma: a tone-curve change raises the well/plate
ratio to a power, which moves the reading like a change of concentration and leaves nothing in the
photo to undo it (on the real-photo assay of ``benchmarks/real_photos.py`` the per-photo gamma
explains 83-97 % of the squared error of every reader, and a fit augmented with gamma +-0.15
scored 5.2 on validation against 2.9 without); ``--augment auto,gamma=0.03`` adds it by hand.

Coordinates: the default for coords is translation only (up to a quarter of the side, the point kept
inside the frame), never flips or rotations. A translation moves a labelled point exactly whatever
convention its labels use (pixel centres, pixel edges, a fixed offset from the object), while a
flip mirrors a constant offset and the model then learns half of it with the wrong sign: the
~0.8 px x-only bias issue 9 found in coords models trained with flips. Flips and rotations of
coords need ``--invariance flip|d4``, a promise that labels follow the pixel-centre convention of
docs/CONTRACTS.md and that mirrored scenes are plausible.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F

from edgereg.core.kinds import target_kind
from edgereg.errors import EdgeregError, did_you_mean
from edgereg.preprocess import PreprocessConfig
from edgereg.preprocess.reference import circle_mask
from edgereg.training.fitting.warp import forward_matrices
from edgereg.training.targets.kind_training import kind_training

ROTATIONS = ("none", "d4", "any")
PRESETS = ("auto", "none", "geometric", "lighting", "all")
COORDS_TRANSLATE = 0.25  # default shift of coords images (fraction of the side), the point kept inside
COORDS_MARGIN = 0.02  # a shifted point stays at least this far (fraction of the side) from the border
LIGHTING = dict(channel_gain=0.15, gradient=0.15)  # the lighting preset (no gamma: see parse_augment)
GRAY_WEIGHTS_BGR = (0.114, 0.587, 0.299)  # OpenCV's luma weights, in B, G, R order
MAX_TRANSLATE = 0.25  # beyond this the sample leaves the frame


@dataclass(frozen=True)
class AugmentConfig:
    """Random transforms applied to each training image (never to validation or test images)."""

    rotation: str = "none"  # "d4": multiples of 90° (exact on square inputs); "any": uniform, circle crops only
    hflip: bool = False  # mirror left-right; with "d4" this covers vertical flips too
    translate: float = 0.0  # max shift per axis as a fraction of the side; the sample's position varies
    brightness: float = 0.0  # max relative gain (0.2 -> x[0.8, 1.2]); changes intensity-read targets
    gamma: float = 0.0  # max |ln gamma| (0.2 -> gamma in [0.82, 1.22]); mimics exposure curves
    noise: float = 0.0  # max Gaussian sigma in [0, 1] pixel units (<= 0.02): sensor noise
    grayscale: float = 0.0  # probability of replacing an image by its gray copy: colour-cast robustness
    channel_gain: float = 0.0  # max relative gain per colour channel (white balance): x[1-g, 1+g] each
    gradient: float = 0.0  # max relative brightness change centre -> edge of a linear illumination ramp
    background: float = 0.0  # probability of swapping the corners (outside the inscribed circle) with another image's

    def __post_init__(self) -> None:
        if self.rotation not in ROTATIONS:
            raise EdgeregError(f"augmentation rotation {self.rotation!r}{did_you_mean(str(self.rotation), ROTATIONS)}"
                               f" is unknown; expected one of {', '.join(ROTATIONS)}")
        limits = {"translate": MAX_TRANSLATE, "brightness": 0.9, "gamma": 1.0, "noise": 0.2, "grayscale": 1.0,
                  "channel_gain": 0.9, "gradient": 0.9, "background": 1.0}
        for name, limit in limits.items():
            value = getattr(self, name)
            if not 0.0 <= value <= limit:
                raise EdgeregError(f"augmentation {name}={value} is out of range; expected 0..{limit}")

    @property
    def geometric(self) -> bool:
        """True when images are warped (and coords/angle targets moved with them)."""
        return self.rotation != "none" or self.hflip or self.translate > 0

    @property
    def photometric(self) -> bool:
        return (self.brightness > 0 or self.gamma > 0 or self.noise > 0 or self.grayscale > 0
                or self.channel_gain > 0 or self.gradient > 0 or self.background > 0)

    def describe(self) -> str:
        """A one-line summary, e.g. ``rotation=any hflip translate=0.05``."""
        parts = [] if self.rotation == "none" else [f"rotation={self.rotation}"]
        parts += ["hflip"] if self.hflip else []
        parts += [f"{f.name}={getattr(self, f.name):g}" for f in fields(self)
                  if f.name not in ("rotation", "hflip") and getattr(self, f.name)]
        return " ".join(parts) or "none"


def default_augment(kind: str, *, crop: str, square: bool, invariance: str = "auto") -> AugmentConfig:
    """Geometric augmentation that keeps (or exactly transforms) the targets of ``kind``.

    ``invariance`` is what the user declared (``auto`` reads it from the kind):

    * auto: coords get translation only (see the module docstring); every other kind is taken as
      unchanged (scalar, vector, distribution) or exactly moved (angle) by rotations and flips:
      arbitrary rotations on circle crops (the mask hides the corners a rotation would invent),
      the 8 exact D4 transforms on other square inputs, flips otherwise;
    * none: no flips or rotations (coords still translate: that moves a point exactly);
    * flip: left-right mirroring only; d4: the 8 rotations/flips by 90 degrees; rotation: any angle
      (circle crops; D4 on other squares).

    Translation (5 %) is used for cropped inputs and coords; whole-frame crops of other kinds skip
    it, as their targets may depend on every pixel (e.g. pixel statistics), and counts skip it (a
    shift may push a counted particle out of the frame).
    """
    if target_kind(kind).xy_points:
        if invariance in ("auto", "none"):
            return AugmentConfig(translate=COORDS_TRANSLATE)
        rotation = {"flip": "none", "d4": "d4" if square else "none",
                    "rotation": "any" if crop == "circle" else ("d4" if square else "none")}[invariance]
        return AugmentConfig(rotation=rotation, hflip=True, translate=COORDS_TRANSLATE)
    translate = 0.05 if crop != "none" and kind_training(kind).translate_ok else 0.0
    if invariance == "none":
        return AugmentConfig(translate=translate)
    if invariance == "flip":
        return AugmentConfig(hflip=True, translate=translate)
    rotation = "any" if crop == "circle" else ("d4" if square else "none")
    if invariance == "d4" and rotation == "any":
        rotation = "d4"
    return AugmentConfig(rotation=rotation, hflip=True, translate=translate)


def parse_augment(spec: str, *, kind: str, crop: str, square: bool, invariance: str = "auto",
                  lighting: bool = False) -> AugmentConfig:
    """Parse ``PRESET[,key=value...]``, e.g. ``auto``, ``none``, ``all`` or ``auto,brightness=0.2,noise=0.01``.

    Presets: ``geometric`` = :func:`default_augment`; ``auto`` = geometric, plus the lighting
    preset when ``lighting`` (the model reads colours relative to a reference region); ``lighting``
    = geometric plus per-channel gain 0.15 and gradient 0.15 (no gamma: module docstring); ``none``;
    ``all`` =
    lighting plus brightness 0.2 and noise 0.02. Keys are the fields of :class:`AugmentConfig`
    (``hflip=0|1``, ``rotation=none|d4|any``, numbers otherwise).

    Raises:
        EdgeregError: an unknown preset or key, a bad value, or a rotation the input cannot take.
    """
    preset, *overrides = [part.strip() for part in spec.split(",") if part.strip()] or ["auto"]
    if preset not in PRESETS:
        raise EdgeregError(f"--augment preset {preset!r}{did_you_mean(preset, PRESETS)} is unknown; "
                           f"expected one of {', '.join(PRESETS)}, e.g. --augment auto,noise=0.01")
    config = (AugmentConfig() if preset == "none"
              else default_augment(kind, crop=crop, square=square, invariance=invariance))
    if preset in ("lighting", "all") or (preset == "auto" and lighting):
        config = replace(config, **LIGHTING)
    if preset == "all":
        config = replace(config, brightness=0.2, noise=0.02)
    names = [f.name for f in fields(AugmentConfig)]
    changes: dict = {}
    for item in overrides:
        key, _, value = item.partition("=")
        if key not in names or not value:
            raise EdgeregError(f"--augment item {item!r} is not key=value with a key in {', '.join(names)}"
                               f"{did_you_mean(key, names)}")
        changes[key] = _parse_value(key, value)
    config = replace(config, **changes)
    if config.rotation == "d4" and not square:
        raise EdgeregError("--augment rotation=d4 needs a square model input; use --size N or rotation=none")
    if config.rotation == "any" and crop != "circle":
        raise EdgeregError("--augment rotation=any needs --crop circle (a rotated square invents its corners); "
                           "use rotation=d4 or --crop circle")
    return config


def _parse_value(key: str, text: str):
    if key == "rotation":
        return text
    if key == "hflip":
        if text not in ("0", "1", "true", "false"):
            raise EdgeregError(f"--augment hflip={text!r}: expected 0 or 1")
        return text in ("1", "true")
    try:
        return float(text)
    except ValueError:
        raise EdgeregError(f"--augment {key}={text!r}: expected a number, e.g. {key}=0.1") from None


def to_float_batch(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """Lay a uint8 batch out for torch.

    Args:
        images: (B, H, W, 3) uint8, BGR.
        device: where the result lives.

    Returns:
        (B, 3, H, W) float32 in [0, 255], BGR, contiguous.
    """
    batch = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    batch = batch.permute(0, 3, 1, 2)  # (B,H,W,3) -> (B,3,H,W)
    return batch.float().contiguous()


def to_model_input(images: torch.Tensor, config: PreprocessConfig, *,
                   memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """Normalize a float batch exactly like :func:`edgereg.preprocess.preprocess_batch`.

    Args:
        images: (B, 3, H, W) float32 in [0, 255], BGR.
        config: the preprocessing configuration (channels, mean/std, crop, fill).
        memory_format: the layout of the result (``torch.channels_last`` for an NHWC training step).

    Returns:
        (B, C, H, W) float32 with C = 3 (RGB) or 1 (gray): ``pixel / 255`` standardized per channel,
        ``config.fill`` outside the circle for circle crops.
    """
    if config.channels == "gray":
        weights = images.new_tensor(GRAY_WEIGHTS_BGR).view(1, 3, 1, 1)  # (3,) -> (1,3,1,1)
        planes = (images * weights).sum(dim=1, keepdim=True)  # (B,3,H,W) -> (B,1,H,W)
    else:
        planes = images.flip(1)  # (B,3,H,W) BGR -> RGB
    scale, offset = config.affine()  # (C,) float32 each
    scale_t = images.new_tensor(scale).view(1, -1, 1, 1)  # (C,) -> (1,C,1,1)
    offset_t = images.new_tensor(offset).view(1, -1, 1, 1)  # (C,) -> (1,C,1,1)
    # pixel * scale + offset written once into the requested layout, then the mask in place
    out = torch.empty(planes.shape, dtype=planes.dtype, device=planes.device, memory_format=memory_format)
    torch.mul(planes, scale_t, out=out).add_(offset_t)
    if config.circle:
        height, width = planes.shape[-2:]
        outside = torch.from_numpy(~circle_mask(height, width)).to(planes.device)  # (H, W) bool
        out.masked_fill_(outside, float(config.fill))
    return out


def augment_batch(images: torch.Tensor, targets: torch.Tensor, *, kind: str, config: AugmentConfig,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly transform a batch and its targets.

    Args:
        images: (B, 3, H, W) float32 in [0, 255], BGR.
        targets: (B, T) float, in the dataset's units: coords as (u, v) pairs in [0, 1] of the model
            input, angles in degrees counter-clockwise as displayed; other kinds are not touched.
        kind: the target kind.
        config: which transforms to draw.
        generator: a CPU generator; the draws depend only on its state (reproducible runs).

    Returns:
        (images (B, 3, H, W) float32 in [0, 255], targets (B, T) float32).
    """
    targets = targets.float()
    if config.geometric:
        angles, flips, shifts = _draw_geometry(images.shape[0], images.shape[2:], config, generator)
        if target_kind(kind).xy_points:
            shifts = _keep_points_inside(targets, angles, flips, shifts, images.shape[2:])
        images = _warp(images, angles, flips, shifts)
        targets = _move_targets(kind, targets, angles, flips, shifts, images.shape[2:])
    if config.photometric:
        images = _jitter(images, config, generator)
    return images, targets


def _uniform(n: int, generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """(n,) float32 uniform in [low, high), drawn on the CPU from ``generator``."""
    return low + (high - low) * torch.rand(n, generator=generator)


def _draw_geometry(batch: int, size: torch.Size, config: AugmentConfig, generator: torch.Generator):
    """Random (angles (B,) degrees, flips (B,) bool, shifts (B, 2) pixels (dx, dy)), on the CPU."""
    height, width = size
    if config.rotation == "any":
        angles = _uniform(batch, generator, 0.0, 360.0)
    elif config.rotation == "d4":
        angles = 90.0 * torch.randint(0, 4, (batch,), generator=generator).float()
    else:
        angles = torch.zeros(batch)
    flips = _uniform(batch, generator) < 0.5 if config.hflip else torch.zeros(batch, dtype=torch.bool)
    shifts = _uniform(2 * batch, generator, -config.translate, config.translate).view(batch, 2)  # (2B,) -> (B,2)
    shifts = shifts * torch.tensor([float(width), float(height)])
    return angles, flips, shifts


def _keep_points_inside(targets: torch.Tensor, angles: torch.Tensor, flips: torch.Tensor, shifts: torch.Tensor,
                        size: torch.Size) -> torch.Tensor:
    """Clamp each image's shift so its rotated/flipped points stay COORDS_MARGIN inside the frame.

    Args:
        targets: (B, 2K) (u, v) pairs in [0, 1]; shifts: (B, 2) pixels (dx, dy).

    Returns:
        (B, 2) float32 shifts in pixels.
    """
    height, width = size
    zero = torch.zeros_like(shifts)
    moved = _move_targets("coords", targets.detach().cpu(), angles, flips, zero, size)  # (B, 2K), no shift
    points = moved.view(moved.shape[0], -1, 2).double()  # (B,2K) -> (B,K,2)
    dims = torch.tensor([float(width), float(height)], dtype=torch.float64)
    low = ((COORDS_MARGIN - points.amin(dim=1)) * dims)  # (B,2): the smallest shift keeping all points in
    high = ((1.0 - COORDS_MARGIN - points.amax(dim=1)) * dims)  # (B,2): the largest
    clamped = torch.maximum(torch.minimum(shifts.double(), high), low)
    return torch.where(low <= high, clamped, zero.double()).float()


def _warp(images: torch.Tensor, angles: torch.Tensor, flips: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Warp each image by its own flip, rotation and shift with one bilinear ``grid_sample``.

    Args:
        images: (B, 3, H, W) float32.
        angles: (B,) degrees; flips: (B,) bool; shifts: (B, 2) pixels.
    """
    batch, _, height, width = images.shape
    half = torch.tensor([(width - 1) / 2.0, (height - 1) / 2.0], dtype=torch.float64)  # (x, y)
    inverse = forward_matrices(angles, flips).transpose(1, 2)  # rotations/flips: inverse = transpose
    offset = -(inverse @ shifts.double().unsqueeze(2)).squeeze(2)  # (B,2,1) -> (B,2)
    # align_corners=True puts pixel centres 0 and W-1 at -1 and +1: x_norm = (x - cx) / half_x.
    linear = inverse * half.view(1, 1, 2) / half.view(1, 2, 1)  # S^-1 A S
    theta = torch.cat([linear, (offset / half).unsqueeze(2)], dim=2).float()  # (B,2,2)+(B,2,1) -> (B,2,3)
    return F.grid_sample(images, _affine_grid(theta.to(images.device), height, width), mode="bilinear",
                         padding_mode="border", align_corners=True)


def _affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid(theta, (B, C, H, W), align_corners=True)`` by broadcasting (a third of its time:
    no (B, H*W, 3) @ (B, 3, 2) product).

    Args:
        theta: (B, 2, 3) float32 maps of normalized output (x, y, 1) to normalized source (x, y).

    Returns:
        (B, H, W, 2) float32 normalized source (x, y) of every output pixel, -1..1 at pixel centres 0, W-1.
    """
    xs = torch.linspace(-1.0, 1.0, width, device=theta.device).view(1, 1, width)  # (W,) -> (1,1,W)
    ys = torch.linspace(-1.0, 1.0, height, device=theta.device).view(1, height, 1)  # (H,) -> (1,H,1)
    t = theta.view(-1, 6, 1, 1)  # (B,2,3) -> (B,6,1,1): t[:, 3*row + col]
    grid = torch.empty(theta.shape[0], height, width, 2, device=theta.device)  # (B,H,W,2)
    torch.add(t[:, 0] * xs + t[:, 1] * ys, t[:, 2], out=grid[..., 0])
    torch.add(t[:, 3] * xs + t[:, 4] * ys, t[:, 5], out=grid[..., 1])
    return grid


def _move_targets(kind: str, targets: torch.Tensor, angles: torch.Tensor, flips: torch.Tensor,
                  shifts: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Apply the images' transforms to the targets as the kind says (coords and angles move)."""
    return kind_training(kind).move_targets(targets, angles, flips, shifts, size)


def _jitter(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Brightness, gamma, grayscale and Gaussian noise per image; result clamped to [0, 255]."""
    batch = images.shape[0]
    device = images.device
    if config.brightness > 0:
        gain = _uniform(batch, generator, 1.0 - config.brightness, 1.0 + config.brightness)
        images = images * gain.to(device).view(batch, 1, 1, 1)  # (B,) -> (B,1,1,1)
    if config.gamma > 0:
        gamma = torch.exp(_uniform(batch, generator, -config.gamma, config.gamma)).to(device)
        images = 255.0 * (images / 255.0).clamp(0.0, 1.0) ** gamma.view(batch, 1, 1, 1)  # (B,) -> (B,1,1,1)
    if config.channel_gain > 0:
        gains = _uniform(3 * batch, generator, 1.0 - config.channel_gain, 1.0 + config.channel_gain)
        images = images * gains.to(device).view(batch, 3, 1, 1)  # (3B,) -> (B,3,1,1)
    if config.gradient > 0:
        images = images * _illumination_ramp(images.shape, config.gradient, generator).to(device)
    if config.background > 0:
        images = _swap_corners(images, config.background, generator)
    if config.grayscale > 0:
        chosen = (_uniform(batch, generator) < config.grayscale).to(device).view(batch, 1, 1, 1)  # (B,) -> (B,1,1,1)
        weights = images.new_tensor(GRAY_WEIGHTS_BGR).view(1, 3, 1, 1)  # (3,) -> (1,3,1,1)
        gray = (images * weights).sum(dim=1, keepdim=True)  # (B,3,H,W) -> (B,1,H,W)
        images = torch.where(chosen, gray.expand_as(images), images)
    if config.noise > 0:
        sigma = 255.0 * _uniform(batch, generator, 0.0, config.noise).to(device)
        sigma = sigma.view(batch, 1, 1, 1)  # (B,) -> (B,1,1,1)
        noise = torch.randn(images.shape, generator=generator).to(device)
        images = images + sigma * noise
    return images.clamp(0.0, 255.0)



def _illumination_ramp(shape: torch.Size, strength: float, generator: torch.Generator) -> torch.Tensor:
    """A random linear illumination field per image: ``1 + a * ramp`` with ``a`` uniform in
    [0, strength] and the ramp -1..+1 across the image along a random heading.

    Returns:
        (B, 1, H, W) float32 multipliers.
    """
    batch, _, height, width = shape
    heading = _uniform(batch, generator, 0.0, 2.0 * np.pi)
    amount = _uniform(batch, generator, 0.0, strength)
    ys = torch.linspace(-1.0, 1.0, height).view(1, height, 1)  # (H,) -> (1,H,1)
    xs = torch.linspace(-1.0, 1.0, width).view(1, 1, width)  # (W,) -> (1,1,W)
    ramp = torch.cos(heading).view(batch, 1, 1) * xs + torch.sin(heading).view(batch, 1, 1) * ys  # (B,H,W)
    ramp = ramp / np.sqrt(2.0)  # -1..1 over the square
    return (1.0 + amount.view(batch, 1, 1) * ramp).unsqueeze(1)  # (B,H,W) -> (B,1,H,W)


def _swap_corners(images: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """With ``probability`` per image, replace its corners (outside the inscribed circle) by those
    of the next image in the batch: the background changes, the round sample does not."""
    batch, _, height, width = images.shape
    chosen = (_uniform(batch, generator) < probability).to(images.device).view(batch, 1, 1, 1)  # (B,)->(B,1,1,1)
    outside = ~torch.from_numpy(circle_mask(height, width)).to(images.device)  # (H, W) bool
    donor = torch.roll(images, shifts=1, dims=0)
    return torch.where(chosen & outside, donor, images)
