"""Synthetic lesions: blobs on textured noise with an exactly known answer.

Each image holds `N` non-overlapping blob-shaped lesions (N drawn uniformly from
`[min_lesions, max_lesions]`) on a smooth random texture with pixel noise. The
distribution of correct segmentations has two scales of ambiguity:

* global: the grader *style* `s` (e.g. narrow / normal / inclusive outline), a
  radius scale shared by every lesion of one grading, drawn with
  `style_probs`;
* local: every lesion `i` is independently segmented ("abnormal") with its own
  probability `p_i`, drawn per lesion from `abnormal_probs`. The image shows
  this probability only as a faint contrast cue: lesion brightness is
  `lesion_visibility + cue_gain * p_i` above the background, blurred by texture
  and noise, so a model can learn it but never read it off exactly.

A grading is `union_{i segmented} {x : rho_i(x) <= scale_s}`, with `rho_i` the
lesion's normalised radius (distance to the centre over the outline radius in
that direction). Every (style, subset) pair is a mode with probability
`style_probs[s] * prod_i (p_i if i in subset else 1 - p_i)`, so the whole
distribution is enumerable (`enumerate_modes`) and can be sampled exactly
(`oracle_sample`, which also draws the stored graders).

Everything is deterministic: `generate_example(spec, seed, split_id, index)`
seeds numpy from `(seed, split_id, index)`. Generating parameters are rounded to
float32 before use, so what a data set stores regenerates its modes exactly.

This is version 1 of the data (builder configs `v1`, `v1_many_lesions`,
`v1_tiny`). Its image does not pin down the answer (the soft edge and the
faint cue leave both the outline and `p_i` uncertain; docs/synthetic_study.md,
"Version 1 of the benchmark"); `generator_v2` renders the well-posed version 2. Both share the
answer model: a grading is the union over segmented lesions of
`{style_field_i <= style_scales[s]}`, so `enumerate_modes` and
`oracle_sample` serve both (`params.style_field()`).
"""
import dataclasses
import itertools
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from datasets import generator_checks

# Largest number of (style, subset) modes `enumerate_modes` will build; beyond
# this the [M, H, W] array stops being a sensible thing to hold in memory.
MAX_ENUMERATED_MODES = 1 << 14
# Angular frequencies of the outline wobble.
_HARMONIC_ORDERS = np.array([2, 3, 4])
NUM_HARMONICS = len(_HARMONIC_ORDERS)


@dataclasses.dataclass(frozen=True)
class LesionsSpec:
  """How images and gradings are generated (filled by the builder configs).

  Attributes:
    image_size: side of the square image in pixels.
    min_lesions: fewest lesions per image (inclusive).
    max_lesions: most lesions per image (inclusive).
    radius_range: (low, high) base lesion radius as a fraction of `image_size`,
      drawn uniformly.
    irregularity: outline wobble; the outline radius is `r * (1 + sum_k A_k
      cos(k theta + phi_k))` with `sum_k A_k <= irregularity`, `k = 2..4`.
    abnormal_probs: the per-lesion probabilities of being segmented, one drawn
      uniformly per lesion.
    style_scales: radius scale of each grader style (narrow ... inclusive).
    style_probs: probability of each style; sums to 1.
    lesion_visibility: brightness every lesion adds ([0, 1] image units).
    cue_gain: extra brightness per unit of abnormal probability (the cue).
    edge_softness: width of the lesions' soft edge in normalised radius units.
    texture_std: amplitude of the smooth background texture.
    noise_std: standard deviation of the white pixel noise.
    num_graders: gradings stored per image.
  """
  image_size: int = 64
  min_lesions: int = 1
  max_lesions: int = 3
  radius_range: tuple[float, float] = (0.05, 0.1)
  irregularity: float = 0.15
  abnormal_probs: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
  style_scales: tuple[float, ...] = (0.8, 1.0, 1.25)
  style_probs: tuple[float, ...] = (0.25, 0.5, 0.25)
  lesion_visibility: float = 0.15
  cue_gain: float = 0.3
  edge_softness: float = 0.15
  texture_std: float = 0.08
  noise_std: float = 0.05
  num_graders: int = 4

  def __post_init__(self):
    generator_checks.check_image_size(self.image_size, 512)
    generator_checks.check_count_range('lesions', self.min_lesions,
                                       self.max_lesions, 0)
    generator_checks.check_lesion_outline(self.radius_range, self.irregularity)
    if not self.abnormal_probs or not all(
        0 <= p <= 1 for p in self.abnormal_probs):
      raise ValueError(f'abnormal_probs must be non-empty probabilities, got '
                       f'{self.abnormal_probs}')
    if (len(self.style_scales) != len(self.style_probs) or
        not self.style_scales or min(self.style_scales) <= 0):
      raise ValueError('style_scales must be positive and match style_probs, '
                       f'got {self.style_scales}, {self.style_probs}')
    generator_checks.check_style_probs(self.style_probs)
    generator_checks.check_num_graders(self.num_graders)


class LesionParams(NamedTuple):
  """Everything that defines one image's answer distribution.

  Attributes:
    image_size: side of the square image.
    centres: float32 `[N, 2]` lesion centres (row, column) in pixels.
    radii: float32 `[N]` base outline radii in pixels.
    harmonics: float32 `[N, 3, 2]` outline coefficients (cos, sin) for the
      angular frequencies 2, 3, 4, as fractions of the radius.
    probs: float32 `[N]` probability that each lesion is segmented.
    style_scales: float32 `[S]` radius scale per grader style.
    style_probs: float32 `[S]` probability per style.
  """
  image_size: int
  centres: np.ndarray
  radii: np.ndarray
  harmonics: np.ndarray
  probs: np.ndarray
  style_scales: np.ndarray
  style_probs: np.ndarray

  def to_features(self) -> dict[str, np.ndarray]:
    """The arrays a data set stores (keys as in the builder's features)."""
    return {
        'lesion_centres': self.centres, 'lesion_radii': self.radii,
        'lesion_harmonics': self.harmonics, 'lesion_probs': self.probs,
        'style_scales': self.style_scales, 'style_probs': self.style_probs,
    }

  def style_field(self) -> np.ndarray:
    """float64 `[N, H, W]`: lesion `i` under style `s` is
    `{style_field[i] <= style_scales[s]}` (here the normalised radius)."""
    return normalised_radius(self)

  @classmethod
  def from_features(cls, record) -> 'LesionParams':
    """Reads the parameters back from a stored record (needs its `image`)."""
    f32 = lambda key: np.asarray(record[key], np.float32)
    num_lesions = f32('lesion_radii').shape[0]
    return cls(
        image_size=int(np.shape(record['image'])[0]),
        centres=f32('lesion_centres').reshape(num_lesions, 2),
        radii=f32('lesion_radii'),
        harmonics=f32('lesion_harmonics').reshape(num_lesions, NUM_HARMONICS,
                                                  2),
        probs=f32('lesion_probs'),
        style_scales=f32('style_scales'),
        style_probs=f32('style_probs'))


_PLACEMENT_TRIES = 200
_PLACEMENT_RESTARTS = 50


def normalised_radius(params) -> np.ndarray:
  """float64 `[N, H, W]`: per lesion, distance over outline radius per pixel.

  A pixel belongs to lesion `i` under style scale `s` iff `rho_i <= s`.
  Parameters of another version (`generator_v2.LesionParamsV2`) return their
  own `style_field()`, which has the same meaning, so code written for v1
  (e.g. the study's per-level decoding) reads v2 as well.
  """
  if not isinstance(params, LesionParams):
    return params.style_field()
  size = params.image_size
  rows, cols = np.meshgrid(np.arange(size, dtype=np.float64),
                           np.arange(size, dtype=np.float64), indexing='ij')
  centres = params.centres.astype(np.float64)
  d_row = rows[None] - centres[:, 0, None, None]
  d_col = cols[None] - centres[:, 1, None, None]
  theta = np.arctan2(d_row, d_col)
  harmonics = params.harmonics.astype(np.float64)
  wobble = np.zeros_like(theta)
  for j, order in enumerate(_HARMONIC_ORDERS):
    wobble += (harmonics[:, j, 0, None, None] * np.cos(order * theta) +
               harmonics[:, j, 1, None, None] * np.sin(order * theta))
  outline = params.radii.astype(np.float64)[:, None, None] * (1 + wobble)
  return np.hypot(d_row, d_col) / outline


def _style_probs(params: LesionParams) -> np.ndarray:
  probs = params.style_probs.astype(np.float64)
  return probs / probs.sum()


def enumerate_modes(params) -> tuple[np.ndarray, np.ndarray]:
  """All distinct gradings of one image and their probabilities.

  Modes are enumerated style-major, then lesion subsets in binary order; masks
  that coincide (e.g. the empty mask of every style, or styles too close to
  change a tiny lesion's pixels) are merged into their first occurrence with
  the probabilities summed, so no two returned modes are equal.

  Args:
    params: the image's generating parameters (`LesionParams` or
      `generator_v2.LesionParamsV2`).

  Returns:
    modes: int32 `[M, H, W]` 0/1 masks.
    probs: float64 `[M]`, summing to 1.
  """
  num_lesions = len(params.probs)
  num_styles = len(params.style_scales)
  if num_styles << num_lesions > MAX_ENUMERATED_MODES:
    raise ValueError(f'{num_styles} styles x 2^{num_lesions} lesion subsets is '
                     f'more than {MAX_ENUMERATED_MODES} modes')
  rho = params.style_field()
  lesion_probs = params.probs.astype(np.float64)
  subsets = np.array(list(itertools.product((False, True), repeat=num_lesions)),
                     dtype=bool).reshape(2**num_lesions, num_lesions)
  subset_probs = np.prod(np.where(subsets, lesion_probs, 1 - lesion_probs),
                         axis=1)
  index_of_mask = {}
  modes, probs = [], []
  for scale, style_prob in zip(params.style_scales, _style_probs(params)):
    inside = rho <= scale  # [N, H, W]
    masks = np.any(subsets[:, :, None, None] & inside[None], axis=1)
    for mask, subset_prob in zip(masks, subset_probs):
      key = mask.tobytes()
      if key not in index_of_mask:
        index_of_mask[key] = len(modes)
        modes.append(mask)
        probs.append(0.0)
      probs[index_of_mask[key]] += style_prob * subset_prob
  return np.stack(modes).astype(np.int32), np.array(probs, np.float64)


def oracle_sample(params, rng: np.random.Generator, n: int) -> np.ndarray:
  """Draws `n` independent gradings from the true distribution.

  Each draw picks a style and, independently per lesion, whether it is
  segmented. The stored graders of a data set are drawn by this function.

  Args:
    params: the image's generating parameters.
    rng: numpy random generator.
    n: number of gradings.

  Returns:
    int32 `[n, H, W]` 0/1 masks.
  """
  rho = params.style_field()
  styles = rng.choice(len(params.style_scales), size=n, p=_style_probs(params))
  abnormal = rng.random((n, len(params.probs))) < params.probs.astype(
      np.float64)
  samples = np.zeros((n,) + rho.shape[1:], np.int32)
  for style, scale in enumerate(params.style_scales):
    drawn = styles == style
    inside = (rho <= scale).astype(np.float32).reshape(
        len(rho), rho.shape[1] * rho.shape[2])
    # [n_s, N] @ [N, H*W] counts segmented lesions covering each pixel.
    covered = abnormal[drawn].astype(np.float32) @ inside
    samples[drawn] = (covered > 0).reshape((-1,) + rho.shape[1:])
  return samples


def _sample_params(spec: LesionsSpec, rng: np.random.Generator) -> LesionParams:
  """Draws lesion count, shapes, probabilities and non-overlapping centres."""
  size = spec.image_size
  num_lesions = int(rng.integers(spec.min_lesions, spec.max_lesions + 1))
  radii = rng.uniform(*spec.radius_range, size=num_lesions) * size
  # Amplitudes sum to at most `irregularity`, so the outline stays within
  # (1 +- irregularity) * radius and the blob is star-shaped.
  amplitudes = rng.dirichlet(np.ones(NUM_HARMONICS), size=num_lesions) * (
      spec.irregularity * rng.uniform(size=(num_lesions, 1)))
  phases = rng.uniform(0, 2 * np.pi, size=(num_lesions, NUM_HARMONICS))
  harmonics = np.stack([amplitudes * np.cos(phases),
                        amplitudes * np.sin(phases)], axis=-1)
  probs = rng.choice(np.asarray(spec.abnormal_probs), size=num_lesions)
  # Largest extent under any style; lesions keep a one-pixel gap at that size.
  extents = radii * (1 + spec.irregularity) * max(spec.style_scales)
  centres = _place(extents, size, rng)
  f32 = lambda x: np.asarray(x, np.float32)
  return LesionParams(
      image_size=size, centres=f32(centres).reshape(num_lesions, 2),
      radii=f32(radii), harmonics=f32(harmonics).reshape(num_lesions,
                                                         NUM_HARMONICS, 2),
      probs=f32(probs), style_scales=f32(spec.style_scales),
      style_probs=f32(spec.style_probs))


def _place(extents: np.ndarray, size: int,
           rng: np.random.Generator) -> np.ndarray:
  """Rejection-samples centres `[N, 2]` so that no two extents overlap."""
  for _ in range(_PLACEMENT_RESTARTS):
    centres = []
    for extent in extents:
      low, high = extent, size - 1 - extent
      if low >= high:
        break
      for _ in range(_PLACEMENT_TRIES):
        candidate = rng.uniform(low, high, size=2)
        if all(np.hypot(*(candidate - c)) > extent + e + 1
               for c, e in zip(centres, extents)):
          centres.append(candidate)
          break
      else:
        break
    if len(centres) == len(extents):
      return np.array(centres).reshape(-1, 2)
  raise ValueError(
      f'could not place {len(extents)} lesions with extents up to '
      f'{extents.max():.1f} px in a {size}x{size} image; lower max_lesions or '
      'radius_range')


def _smooth_noise(rng: np.random.Generator, size: int,
                  sigma: float) -> np.ndarray:
  field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma,
                                  mode='wrap')
  return field / (field.std() + 1e-12)


def render_image(spec: LesionsSpec, params: LesionParams,
                 rng: np.random.Generator) -> np.ndarray:
  """uint8 `[H, W, 1]` image: texture + soft-edged lesions + noise."""
  size = spec.image_size
  background = (0.35 + spec.texture_std * _smooth_noise(rng, size, size / 10) +
                0.5 * spec.texture_std * _smooth_noise(rng, size, 1.0))
  rho = normalised_radius(params)
  # Soft edge centred on the normal outline, spanning the style scales.
  profile = 1 / (1 + np.exp(-(1 - rho) / spec.edge_softness))
  brightness = spec.lesion_visibility + spec.cue_gain * params.probs.astype(
      np.float64)
  image = background + np.sum(brightness[:, None, None] * profile, axis=0)
  image += spec.noise_std * rng.standard_normal((size, size))
  return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)[..., None]


def generate_example(spec: LesionsSpec, seed: int, split_id: int,
                     index: int) -> dict[str, np.ndarray]:
  """One example, deterministic in `(seed, split_id, index)`.

  Returns:
    `image` uint8 `[H, W, 1]`, `graders` uint8 `[G, H, W]` (0/1) drawn by
    `oracle_sample`, and the `LesionParams.to_features()` arrays.
  """
  rng = np.random.default_rng([seed, split_id, index])
  params = _sample_params(spec, rng)
  image = render_image(spec, params, rng)
  graders = oracle_sample(params, rng, spec.num_graders).astype(np.uint8)
  return {'image': image, 'graders': graders, **params.to_features()}
