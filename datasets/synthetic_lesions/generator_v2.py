"""Synthetic lesions v2: the image shows everything but the designed ambiguity.

Version 1 (`generator`) blurred the outline and hid each lesion's
probability in a faint cue, so no reader of the image could reach its oracle
(docs/synthetic_study.md, "Version 1 of the benchmark"). Here:

* **Shape, exactly readable.** Lesion `i` is the pixel mask
  `M_i = {rho_i <= 1}` of a star-shaped blob (as in v1), drawn with a hard
  edge at `background + cue_levels[c_i]`; texture and noise are bounded, so
  a threshold halfway to the faintest cue recovers every `M_i` exactly.
* **Probability, exactly readable.** `p_i = abnormal_probs[c_i]` with the
  cue class `c_i` drawn uniformly; the class is the lesion's brightness
  level, and the levels are further apart than twice the largest deviation
  of texture + noise (checked), so the nearest level is always right.
* **One global, invisible factor.** The grader style `s` (drawn with
  `style_probs`, shared by all lesions of one grading) moves *every*
  outline by the same signed distance: style `s` marks lesion `i` as
  `{g_i <= style_offsets[s]}` with `g_i` the signed Euclidean distance to
  `M_i` in pixels (`-` distance to the nearest outside pixel inside,
  distance to the nearest lesion pixel outside). With the default
  `(-2.5, 0, 2.5)` the narrow grader erodes and the inclusive one dilates
  every lesion by about 2 px.
* **One local, invisible factor per lesion.** Lesion `i` is segmented with
  probability `p_i`, independently.

A grading is the union of the segmented lesions' style masks, the same
answer model as v1 with `g_i` in place of v1's normalised radius, so
`generator.enumerate_modes` and `generator.oracle_sample` enumerate and
sample it exactly (`LesionParamsV2.style_field`). Dilated lesions never touch
(placement keeps a gap at the widest style), so each grading is a union of
separate per-lesion masks.

Deterministic in `(seed, split_id, index)` like v1.
"""
import dataclasses
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from datasets import generator_checks
from datasets.synthetic_lesions import generator

# The largest deviation of the white noise from its mean, in noise stds:
# the noise is clipped there, so the image's separability is guaranteed, not
# just probable.
NOISE_CLIP_STDS = 3.0
# Re-draws of the lesion radii when they cannot be placed, and candidate
# centres tried per lesion and draw; the fit check in `LesionsSpecV2` keeps
# the re-draws from ever being exhausted for valid specs.
_PLACEMENT_REDRAWS = 200
_PLACEMENT_CANDIDATES = 2048
# Densest packing the fit check accepts: the lesions' disks at the widest
# style, plus their gaps, may cover at most this share of the image. Random
# sequential placement of disks jams near 0.55 of the plane; a square with
# borders less.
_MAX_PACKING_FRACTION = 0.45


@dataclasses.dataclass(frozen=True)
class LesionsSpecV2:
  """How v2 images and gradings are generated (filled by the builder configs).

  Attributes:
    image_size: side of the square image in pixels.
    min_lesions: fewest lesions per image (inclusive, >= 1).
    max_lesions: most lesions per image (inclusive).
    radius_range: (low, high) base outline radius as a fraction of
      `image_size`, drawn uniformly.
    irregularity: outline wobble, as in v1 (`sum_k A_k <= irregularity`).
    abnormal_probs: the presence probabilities, one class drawn uniformly
      per lesion; each in (0, 1).
    cue_levels: brightness above the background of a lesion of each class
      (same order as `abnormal_probs`); increasing.
    style_offsets: signed distance (px) each grader style moves every
      outline by (negative = erode). None may be the distance between two
      pixel centres (the square root of an integer), so no pixel lies on a
      style's boundary.
    style_probs: probability of each style; sums to 1.
    background: mean background brightness ([0, 1] image units).
    texture_amplitude: largest deviation of the smooth background texture.
    noise_std: std of the white pixel noise, clipped at `NOISE_CLIP_STDS`.
    num_graders: gradings stored per image.
  """
  image_size: int = 64
  min_lesions: int = 2
  max_lesions: int = 6
  radius_range: tuple[float, float] = (0.075, 0.11)
  irregularity: float = 0.15
  abnormal_probs: tuple[float, ...] = (0.2, 0.5, 0.8)
  cue_levels: tuple[float, ...] = (0.3, 0.5, 0.7)
  style_offsets: tuple[float, ...] = (-2.5, 0.0, 2.5)
  style_probs: tuple[float, ...] = (0.25, 0.5, 0.25)
  background: float = 0.15
  texture_amplitude: float = 0.03
  noise_std: float = 0.015
  num_graders: int = 4

  def __post_init__(self):
    generator_checks.check_image_size(self.image_size, 512)
    generator_checks.check_count_range('lesions', self.min_lesions,
                                       self.max_lesions, 1, 255)
    generator_checks.check_lesion_outline(self.radius_range, self.irregularity)
    probs = self.abnormal_probs
    if (not probs or not all(0 < p < 1 for p in probs) or
        len(set(probs)) != len(probs)):
      raise ValueError(f'abnormal_probs must be distinct probabilities in '
                       f'(0, 1), got {probs}')
    self._check_cue_levels()
    self._check_styles()
    self._check_fit()
    generator_checks.check_num_graders(self.num_graders)

  @property
  def max_deviation(self) -> float:
    """Largest |texture + noise + 8-bit rounding| of any pixel."""
    return (self.texture_amplitude + NOISE_CLIP_STDS * self.noise_std +
            0.5 / 255)

  def _check_cue_levels(self):
    levels = self.cue_levels
    if len(levels) != len(self.abnormal_probs):
      raise ValueError(f'cue_levels needs one level per abnormal_probs entry '
                       f'({len(self.abnormal_probs)}), got {levels}')
    if self.texture_amplitude < 0 or self.noise_std < 0:
      raise ValueError('texture_amplitude and noise_std must be >= 0, got '
                       f'{self.texture_amplitude}, {self.noise_std}')
    # Background (level 0) and every cue level must be separated by more than
    # twice the largest deviation, or a pixel could be read as its neighbour.
    gaps = np.diff((0.0,) + tuple(levels))
    if np.any(gaps <= 2 * self.max_deviation):
      raise ValueError(
          f'cue_levels {levels} collide: neighbouring levels (and the '
          f'background, level 0) must differ by more than twice the largest '
          f'pixel deviation {self.max_deviation:.4f} (texture_amplitude + '
          f'{NOISE_CLIP_STDS:g} noise_std + rounding)')
    if (self.background - self.max_deviation < 0 or
        self.background + levels[-1] + self.max_deviation > 1):
      raise ValueError(
          f'background {self.background} + cue_levels {levels} +- '
          f'{self.max_deviation:.4f} leave [0, 1]: the image would clip')

  def _check_styles(self):
    offsets = self.style_offsets
    if (len(offsets) != len(self.style_probs) or not offsets or
        len(set(offsets)) != len(offsets)):
      raise ValueError('style_offsets must be distinct and match style_probs, '
                       f'got {offsets}, {self.style_probs}')
    for offset in offsets:
      square = offset * offset
      if offset != 0 and abs(square - round(square)) < 1e-6:
        raise ValueError(
            f'style_offsets entry {offset} is a distance between pixel '
            'centres (its square is an integer): pixels would lie exactly on '
            'the style boundary; use e.g. 2.5 instead of 2')
    generator_checks.check_style_probs(self.style_probs)
    smallest_inner = (self.radius_range[0] * self.image_size *
                      (1 - self.irregularity))
    if smallest_inner <= -min(offsets) + 1:
      raise ValueError(
          f'radius_range {self.radius_range}: the smallest lesion (inner '
          f'radius {smallest_inner:.1f} px) would vanish under the narrowest '
          f'style offset {min(offsets)}')

  @property
  def max_extent(self) -> float:
    """Largest distance (px) from a centre to the widest style's outline."""
    return (self.radius_range[1] * self.image_size * (1 + self.irregularity) +
            max(0.0, max(self.style_offsets)))

  def _check_fit(self):
    mean_extent = (np.mean(self.radius_range) * self.image_size *
                   (1 + self.irregularity) + max(0.0, max(self.style_offsets)))
    covered = self.max_lesions * np.pi * (mean_extent + 0.5)**2
    if (covered > _MAX_PACKING_FRACTION * self.image_size**2 or
        2 * self.max_extent + 2 >= self.image_size):
      raise ValueError(
          f'max_lesions {self.max_lesions} lesions of radius_range '
          f'{self.radius_range} (widest style) do not fit a '
          f'{self.image_size}x{self.image_size} image: they would cover '
          f'{covered / self.image_size**2:.0%} of it, more than '
          f'{_MAX_PACKING_FRACTION:.0%}')


class LesionParamsV2(NamedTuple):
  """Everything that defines one v2 image's answer distribution.

  Attributes:
    image_size: side of the square image.
    labels: uint8 `[H, W]`, 0 = background, `i + 1` = the normal mask `M_i`
      of lesion `i`.
    probs: float32 `[N]` probability that each lesion is segmented.
    style_scales: float32 `[S]`, each style's signed outline offset in px
      (the thresholds of `style_field`; the v1 name, so v1 code reads it).
    style_probs: float32 `[S]` probability per style.
  """
  image_size: int
  labels: np.ndarray
  probs: np.ndarray
  style_scales: np.ndarray
  style_probs: np.ndarray

  def lesion_masks(self) -> np.ndarray:
    """bool `[N, H, W]`: the normal masks `M_i`."""
    ids = np.arange(1, len(self.probs) + 1)
    return np.asarray(self.labels)[None] == ids[:, None, None]

  def style_field(self) -> np.ndarray:
    """float64 `[N, H, W]`: signed Euclidean distance (px) to each `M_i`.

    Inside: minus the distance to the nearest pixel outside `M_i`; outside:
    the distance to the nearest pixel of `M_i`. Lesion `i` under style `s`
    is `{style_field[i] <= style_scales[s]}`.
    """
    fields = []
    for mask in self.lesion_masks():
      inside = ndimage.distance_transform_edt(mask)
      outside = ndimage.distance_transform_edt(~mask)
      fields.append(np.where(mask, -inside, outside))
    return np.stack(fields).reshape(
        (len(self.probs),) + np.shape(self.labels)).astype(np.float64)

  def to_features(self) -> dict[str, np.ndarray]:
    """The arrays a data set stores (keys as in the builder's features)."""
    return {'lesion_labels': self.labels, 'lesion_probs': self.probs,
            'style_scales': self.style_scales,
            'style_probs': self.style_probs}

  @classmethod
  def from_features(cls, record) -> 'LesionParamsV2':
    labels = np.asarray(record['lesion_labels'], np.uint8)
    return cls(image_size=int(labels.shape[0]), labels=labels,
               probs=np.asarray(record['lesion_probs'], np.float32),
               style_scales=np.asarray(record['style_scales'], np.float32),
               style_probs=np.asarray(record['style_probs'], np.float32))


def params_from_features(record):
  """`LesionParamsV2` or v1 `generator.LesionParams` of a stored record."""
  if 'lesion_labels' in record:
    return LesionParamsV2.from_features(record)
  return generator.LesionParams.from_features(record)


def _draw_masks(spec: LesionsSpecV2, rng: np.random.Generator) -> np.ndarray:
  """bool `[N, H, W]` normal masks of non-touching blobs, each one 8-connected
  component (re-drawn until they are)."""
  size = spec.image_size
  num_lesions = int(rng.integers(spec.min_lesions, spec.max_lesions + 1))
  for _ in range(_PLACEMENT_REDRAWS):
    radii = rng.uniform(*spec.radius_range, size=num_lesions) * size
    amplitudes = rng.dirichlet(
        np.ones(generator.NUM_HARMONICS), size=num_lesions) * (
            spec.irregularity * rng.uniform(size=(num_lesions, 1)))
    phases = rng.uniform(0, 2 * np.pi,
                         size=(num_lesions, generator.NUM_HARMONICS))
    harmonics = np.stack([amplitudes * np.cos(phases),
                          amplitudes * np.sin(phases)], axis=-1)
    # Widest style's extent plus one pixel, so dilated lesions never touch
    # (`_place` keeps another pixel between extents).
    extents = radii * (1 + spec.irregularity) + max(
        0.0, max(spec.style_offsets)) + 1
    centres = _place(extents, size, rng)
    if centres is None:
      continue
    shapes = generator.LesionParams(
        image_size=size, centres=centres.astype(np.float32),
        radii=radii.astype(np.float32),
        harmonics=harmonics.astype(np.float32),
        probs=np.zeros(num_lesions, np.float32),
        style_scales=np.ones(1, np.float32),
        style_probs=np.ones(1, np.float32))
    masks = generator.normalised_radius(shapes) <= 1
    if all(ndimage.label(m, structure=np.ones((3, 3)))[1] == 1
           for m in masks):
      return masks
  raise ValueError(
      f'could not place {num_lesions} lesions of radius_range '
      f'{spec.radius_range} in a {size}x{size} image in '
      f'{_PLACEMENT_REDRAWS} draws; lower max_lesions or radius_range')


def _place(extents: np.ndarray, size: int,
           rng: np.random.Generator) -> np.ndarray | None:
  """Centres `[N, 2]` whose disks of radius `extents` keep a 1 px gap and
  stay inside the image, placed largest first from uniform candidates; None
  when one does not fit."""
  centres = np.zeros((len(extents), 2))
  placed = []
  for i in np.argsort(-extents, kind='stable'):
    low, high = extents[i], size - 1 - extents[i]
    candidates = rng.uniform(low, high, size=(_PLACEMENT_CANDIDATES, 2))
    # [candidates, placed] centre distances against the required gaps.
    distance = np.linalg.norm(candidates[:, None] - centres[placed][None],
                              axis=-1)
    free = np.all(distance > extents[i] + extents[placed] + 1, axis=1)
    if not free.any():
      return None
    centres[i] = candidates[np.argmax(free)]
    placed.append(i)
  return centres


def _sample_params(spec: LesionsSpecV2,
                   rng: np.random.Generator) -> tuple[LesionParamsV2,
                                                      np.ndarray]:
  """The parameters and each lesion's cue class `[N]`."""
  inside = _draw_masks(spec, rng)  # [N, H, W]
  num_lesions = len(inside)
  labels = np.zeros(inside.shape[1:], np.uint8)
  for i, mask in enumerate(inside):
    labels[mask] = i + 1
  classes = rng.integers(0, len(spec.abnormal_probs), size=num_lesions)
  params = LesionParamsV2(
      image_size=spec.image_size, labels=labels,
      probs=np.asarray(spec.abnormal_probs, np.float32)[classes],
      style_scales=np.asarray(spec.style_offsets, np.float32),
      style_probs=np.asarray(spec.style_probs, np.float32))
  return params, classes


def render_image(spec: LesionsSpecV2, params: LesionParamsV2,
                 classes: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
  """uint8 `[H, W, 1]`: bounded texture + hard-edged lesions + clipped noise.

  Args:
    spec: the generation settings.
    params: the image's parameters.
    classes: int `[N]`, each lesion's cue class.
    rng: numpy random generator.
  """
  size = spec.image_size
  texture = ndimage.gaussian_filter(rng.standard_normal((size, size)),
                                    size / 10, mode='wrap')
  texture *= spec.texture_amplitude / max(np.abs(texture).max(), 1e-12)
  noise = np.clip(rng.standard_normal((size, size)), -NOISE_CLIP_STDS,
                  NOISE_CLIP_STDS) * spec.noise_std
  levels = np.concatenate([[0.0], np.asarray(spec.cue_levels)[classes]])
  image = spec.background + texture + noise + levels[params.labels]
  return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)[..., None]


def generate_example(spec: LesionsSpecV2, seed: int, split_id: int,
                     index: int) -> dict[str, np.ndarray]:
  """One example, deterministic in `(seed, split_id, index)`.

  Returns:
    `image` uint8 `[H, W, 1]`, `graders` uint8 `[G, H, W]` (0/1) drawn by
    `generator.oracle_sample`, and the `LesionParamsV2.to_features()` arrays.
  """
  rng = np.random.default_rng([seed, split_id, index])
  params, classes = _sample_params(spec, rng)
  image = render_image(spec, params, classes, rng)
  graders = generator.oracle_sample(params, rng,
                                    spec.num_graders).astype(np.uint8)
  return {'image': image, 'graders': graders, **params.to_features()}
