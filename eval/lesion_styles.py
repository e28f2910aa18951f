"""Grader style and lesion presence read off synthetic-lesion samples, and
the scores of the answer's hierarchy.

A synthetic-lesions grading (`datasets/synthetic_lesions`) is drawn in two
stages: one grader style `s` for the whole grading, shared by every lesion
(the only factor that needs a global latent), then each lesion's presence,
independently with its probability `p_i`. Style `s` marks lesion `i` as
`{field_i <= style_scales[s]}` with `field = params.style_field()` (v2: the
signed distance to the lesion's mask in px; v1: its normalised radius).
GED^2 barely distinguishes a sampler that draws the style once per grading
from one that draws it per lesion, so the style is read off every present
lesion of every sample (`decode_lesion_styles`) and scored directly
(`hierarchy_scores`):

* `style_coherence`: over the unordered pairs of present lesions within one
  sample, pooled over the samples, the fraction with the same style
  (truth: 1; each lesion's style drawn independently from (.25, .5, .25):
  `sum_s p_s^2 = 0.375`);
* `style_tv`: total-variation distance between the styles of all present
  lesions of all samples (pooled) and the true style probabilities
  (truth: 0 up to sampling noise). Pooled over lesions, not one style per
  sample, so it scores the style marginal whether or not a sample is
  coherent, and coherence is left to `style_coherence`;
* `presence_bias`: mean over lesions of (presence rate over the samples -
  `p_i`) (negative: lesions segmented too rarely).

Shape glossary: `S` samples, `N` lesions, `H, W` image size.
"""
from typing import Dict, Tuple

import numpy as np

# A lesion counts as segmented when the sample covers at least this fraction
# of its narrowest-style mask (which every style's mask contains).
PRESENCE_THRESHOLD = 0.5
# Lesion i's region reaches this fraction of the spread between the widest
# and the narrowest style beyond the widest style (v2: 2.5 px), so a sample
# that over-dilates is still compared on its whole outline.
REGION_MARGIN = 0.5


def _check_samples(samples: np.ndarray, field: np.ndarray,
                   presence_threshold: float) -> np.ndarray:
  if not 0 < presence_threshold <= 1:
    raise ValueError(f'presence_threshold must be in (0, 1], got '
                     f'{presence_threshold}.')
  samples = np.asarray(samples, bool)
  if samples.ndim != 3 or samples.shape[1:] != field.shape[1:]:
    raise ValueError(f'samples of shape {samples.shape} do not match the '
                     f'{field.shape[1:]} image of the lesion parameters.')
  return samples


def _presence(flat: np.ndarray, field: np.ndarray, scales: np.ndarray,
              presence_threshold: float) -> np.ndarray:
  """bool `[S, N]`: the sample (float `[S, H*W]`) covers at least
  `presence_threshold` of lesion i's narrowest-style mask."""
  core = (field <= scales.min()).reshape(len(field), -1)  # [N, H*W]
  covered = flat @ core.T.astype(np.float32)  # [S, N]
  return covered >= presence_threshold * np.maximum(core.sum(1), 1)


def decode_lesion_samples(
    samples: np.ndarray, params,
    presence_threshold: float) -> Tuple[np.ndarray, np.ndarray]:
  """Reads one grader style per sample, and lesion presence, off samples.

  Lesion `i` is present when the sample covers at least
  `presence_threshold` of its narrowest style's mask
  `{field_i <= min(style_scales)}`. The style is the one whose grading of
  the present lesions (`union_i {field_i <= style_scales[s]}`) has the
  highest IoU with the whole sample; styles whose gradings coincide (v1's
  tiny lesions; never on v2, whose offsets move every outline by at least a
  pixel) resolve to the first (narrowest). A true grading therefore decodes
  to its own style and subset exactly (tested on every enumerated mode of
  v2 images).

  Args:
    samples: bool `[S, H, W]` foreground masks.
    params: the image's generating parameters (`generator.LesionParams` or
      `generator_v2.LesionParamsV2`).
    presence_threshold: covered fraction of the narrowest-style mask, in
      (0, 1].

  Returns:
    `styles` int `[S]` (index into `params.style_scales`; -1 where no lesion
    is present, so the style is undefined) and `present` bool `[S, N]`.
  """
  field = params.style_field()  # [N, H, W]
  samples = _check_samples(samples, field, presence_threshold)
  scales = np.asarray(params.style_scales, np.float64)
  flat = samples.reshape(len(samples), -1).astype(np.float32)
  present = _presence(flat, field, scales, presence_threshold)
  ious = []
  for scale in scales:
    inside = (field <= scale).reshape(len(field), -1).astype(np.float32)
    grading = (present.astype(np.float32) @ inside) > 0  # [S, H*W]
    union = np.sum(grading | (flat > 0), axis=1)
    intersection = np.sum(grading & (flat > 0), axis=1)
    ious.append(intersection / np.maximum(union, 1))
  styles = np.argmax(np.stack(ious, axis=1), axis=1)
  styles = np.where(present.any(axis=1), styles, -1)
  return styles, present


def lesion_regions(field: np.ndarray, scales) -> np.ndarray:
  """bool `[N, H, W]`: the pixels where lesion i's style is read.

  Pixels strictly closer to lesion i than to any other lesion
  (`field_i < field_j`, j != i) and within the widest style's mask plus
  `REGION_MARGIN` of the style spread. The widest-style masks of two
  lesions never meet (both generators place lesions with a gap at the
  widest style), so every style's mask of lesion i lies inside its region
  and no other lesion's does: restricted to the region, a true grading is
  exactly lesion i's mask in its style.

  Args:
    field: float `[N, H, W]`, `params.style_field()`.
    scales: `[styles]`, `params.style_scales`.
  """
  scales = np.asarray(scales, np.float64)
  reach = scales.max() + REGION_MARGIN * (scales.max() - scales.min())
  nearest = np.ones(field.shape, bool)
  for i in range(len(field)):
    others = np.delete(field, i, axis=0)
    if len(others):
      nearest[i] = field[i] < others.min(axis=0)
  return nearest & (field <= reach)


def decode_lesion_styles(
    samples: np.ndarray, params,
    presence_threshold: float = PRESENCE_THRESHOLD
) -> Tuple[np.ndarray, np.ndarray]:
  """Reads a grader style per present lesion, and presence, off samples.

  Presence as in `decode_lesion_samples`. The style of present lesion `i`
  is the one whose mask `{field_i <= style_scales[s]}` has the highest IoU
  with the sample within `lesion_regions(...)[i]`; ties resolve to the
  first (narrowest). Every lesion of a true grading decodes to the
  grading's style (tested on every enumerated mode of v2 images).

  Args:
    samples: bool `[S, H, W]` foreground masks.
    params: the image's generating parameters (v1 or v2).
    presence_threshold: see `decode_lesion_samples`.

  Returns:
    `styles` int `[S, N]` (index into `params.style_scales`; -1 where the
    lesion is absent) and `present` bool `[S, N]`.
  """
  field = params.style_field()  # [N, H, W]
  samples = _check_samples(samples, field, presence_threshold)
  scales = np.asarray(params.style_scales, np.float64)
  flat = samples.reshape(len(samples), -1).astype(np.float32)
  present = _presence(flat, field, scales, presence_threshold)
  region = lesion_regions(field, scales).reshape(len(field), -1)  # [N, H*W]
  in_region = flat @ region.T.astype(np.float32)  # [S, N]
  ious = []
  for scale in scales:
    target = (field <= scale).reshape(len(field), -1) & region  # [N, H*W]
    intersection = flat @ target.T.astype(np.float32)  # [S, N]
    union = in_region + target.sum(1) - intersection
    ious.append(intersection / np.maximum(union, 1))
  styles = np.argmax(np.stack(ious, axis=-1), axis=-1)  # [S, N]
  return np.where(present, styles, -1), present


def style_coherence(styles: np.ndarray) -> float:
  """Fraction of same-style pairs of present lesions within a sample.

  Args:
    styles: int `[S, N]`, -1 = absent.

  Returns:
    Same-style pairs over all unordered pairs of present lesions, both
    summed over the samples; nan when no sample has two present lesions.
  """
  styles = np.asarray(styles)
  present = np.sum(styles >= 0, axis=1)  # [S]
  pairs = np.sum(present * (present - 1))
  if pairs == 0:
    return float('nan')
  same = 0
  for style in np.unique(styles[styles >= 0]):
    count = np.sum(styles == style, axis=1)  # [S]
    same += np.sum(count * (count - 1))
  return float(same / pairs)


def style_tv(styles: np.ndarray, style_probs) -> float:
  """Total-variation distance between the present lesions' styles (pooled
  over lesions and samples) and `style_probs`; nan without a present
  lesion.

  Args:
    styles: int `[S, N]`, -1 = absent.
    style_probs: `[styles]`, normalised here.
  """
  styles = np.asarray(styles)
  probs = np.asarray(style_probs, np.float64)
  probs = probs / probs.sum()
  defined = styles[styles >= 0]
  if not defined.size:
    return float('nan')
  freqs = np.bincount(defined, minlength=len(probs)) / defined.size
  return float(0.5 * np.sum(np.abs(freqs - probs)))


def presence_bias(present: np.ndarray, probs) -> float:
  """Mean over lesions of (presence rate over the samples - `probs`).

  Args:
    present: bool `[S, N]`.
    probs: `[N]`, each lesion's presence probability.
  """
  rates = np.asarray(present, bool).mean(axis=0)
  return float(np.mean(rates - np.asarray(probs, np.float64)))


def hierarchy_scores(samples: np.ndarray, params,
                     presence_threshold: float = PRESENCE_THRESHOLD
                     ) -> Dict[str, float]:
  """`style_coherence`, `style_tv` and `presence_bias` of one image's
  samples (bool `[S, H, W]`) against its generating parameters."""
  styles, present = decode_lesion_styles(samples, params, presence_threshold)
  return {'style_coherence': style_coherence(styles),
          'style_tv': style_tv(styles, params.style_probs),
          'presence_bias': presence_bias(present, params.probs)}
