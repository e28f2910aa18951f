"""Metrics other LIDC papers report, for one image (see
docs/lidc_protocols.md, "How the published LIDC numbers were computed").

* `sample_diversity`: `E[d(S, S')]`, the within-samples term of GED^2
  (d = 1 - IoU), as PHiSeg's fork used by SSN and CCDM report it.
* `hungarian_matched_iou_repeat_gt`: the Hungarian-matched IoU with the ground
  truths repeated N / M times (MoSE, CAR). When M divides N this is the same
  matrix as the HPU-Net's LCM duplication up to a column order, so the value
  equals `metrics.hungarian_matched_iou`; otherwise it is undefined (CAR
  asserts, MoSE switches to optimal transport with uniform weights, which is
  again the LCM value).
* `variance_ncc`: PHiSeg's `utils.variance_ncc_dist`.
* `pixel_ece`: expected calibration error of a per-pixel probability map
  against the graders' mean, bins `[lo, hi)`, one image (this code's
  default: the probability is the fraction of samples marking the pixel).
* `calibration_bins`, `ece_from_bins`, `class_wise_ece`: the ECEs MoSE and
  SSN report, from the mean softmax. MoSE (`utils.metrics.calculate_ece`
  with `label_range=[1]`): the foreground only, bins `(lo, hi]` so that
  p = 0 pixels fall in no bin yet count in the pixel total, pooled over the
  test set (per-image `calibration_bins` summed, then `ece_from_bins`). SSN
  (`calc_class_wise_expected_calibration_error`): bins `[lo, hi)` (the last
  `[0.9, 1]`), the background's and the foreground's ECE of each image
  averaged (`class_wise_ece`), then the mean over images.

Conventions as in `eval.metrics`: boolean mask stacks, both-empty IoU = 1.
"""
import numpy as np
from scipy import optimize

from eval import metrics

# PHiSeg's `pixel_wise_xent` adds this inside the log.
NCC_LOG_EPS = 1e-8


def sample_diversity(samples, include_self_pairs=True):
  """Mean pairwise `1 - IoU` between the samples of one image.

  Args:
    samples: bool `[N, H, W]`.
    include_self_pairs: True averages all N^2 ordered pairs (the diagonal is
      0), as the GED^2 code of PHiSeg, CCDM and MoSE does; False the N (N - 1)
      pairs i != j.

  Returns:
    The diversity as a float in [0, 1].
  """
  distances = 1.0 - metrics.pairwise_iou(samples, samples)
  n = len(distances)
  if include_self_pairs:
    return float(distances.mean())
  if n < 2:
    raise ValueError(f'sample_diversity without self pairs needs >= 2 '
                     f'samples, got {n}.')
  return float((distances.sum() - np.trace(distances)) / (n * (n - 1)))


def hungarian_matched_iou_repeat_gt(samples, ground_truths):
  """Hungarian-matched IoU with each ground truth repeated N / M times.

  Args:
    samples: bool `[N, H, W]`.
    ground_truths: bool `[M, H, W]`; M must divide N.

  Returns:
    The mean IoU of the N matched pairs.
  """
  iou_matrix = metrics.pairwise_iou(samples, ground_truths)
  n, m = iou_matrix.shape
  if n % m:
    raise ValueError(f'hm_iou convention repeat_gt needs the number of '
                     f'samples ({n}) to be a multiple of the number of ground '
                     f'truths ({m}); use the lcm convention.')
  repeated = np.tile(iou_matrix, (1, n // m))
  rows, cols = optimize.linear_sum_assignment(repeated, maximize=True)
  return float(repeated[rows, cols].mean())


def binary_class_probabilities(foreground):
  """Foreground probability `[..., H, W]` -> `[..., H, W, 2]` (bg, fg).

  Only for exact foreground probabilities: a float32 softmax near 1 has lost
  the background's (`1 - fg` is 0 where the logit gap exceeds ~17), so the
  evaluator keeps both classes' softmax instead.
  """
  foreground = np.asarray(foreground, np.float64)
  return np.stack([1.0 - foreground, foreground], axis=-1)


def variance_ncc(sample_probs, ground_truths):
  """PHiSeg's NCC between the samples' and the graders' cross-entropy maps.

  With `s_i` the class probabilities of sample i, `s_bar` their mean over the
  samples and `y_j` the one-hot ground truth j, per pixel:
    E_ss = mean_i CE(s_bar, s_i),  E_sy_j = mean_i CE(y_j, s_i),
    CE(t, s) = -sum_k t_k log(s_k + 1e-8),
  and NCC = mean_j r(E_ss, E_sy_j), r the Pearson correlation over the
  pixels (PHiSeg's `ncc`: zero-normalised, population std). PHiSeg's
  evaluation passes the softmax of each sample (not the argmax).

  Args:
    sample_probs: float `[N, H, W, K]` class probabilities per sample.
    ground_truths: int or bool `[M, H, W]` labels in `[0, K)`.

  Returns:
    NCC as a float in [-1, 1]; nan where a map is constant (r undefined;
    PHiSeg's code divides by a zero std there).
  """
  sample_probs = np.asarray(sample_probs, np.float64)
  labels = np.asarray(ground_truths).astype(np.int64)
  if sample_probs.ndim != 4 or labels.ndim != 3 or (
      sample_probs.shape[1:3] != labels.shape[1:]):
    raise ValueError(f'variance_ncc: expected sample_probs [N, H, W, K] and '
                     f'ground_truths [M, H, W] of one size, got '
                     f'{sample_probs.shape} and {labels.shape}.')
  num_classes = sample_probs.shape[-1]
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f'variance_ncc: labels outside [0, {num_classes}).')
  # Both maps are linear in mean_i log(s_i + eps): [H, W, K].
  mean_log = np.mean(np.log(sample_probs + NCC_LOG_EPS), axis=0)
  e_ss = -np.sum(sample_probs.mean(axis=0) * mean_log, axis=-1)
  e_sy = -np.take_along_axis(mean_log[None], labels[..., None], axis=-1)[
      ..., 0]  # [M, H, W]
  return float(np.mean([_pearson(e_ss, e) for e in e_sy]))


def _pearson(a, b):
  a = a.ravel() - a.mean()
  b = b.ravel() - b.mean()
  norm = np.sqrt(np.sum(a * a) * np.sum(b * b))
  return float(np.sum(a * b) / norm) if norm > 0 else float('nan')


def pixel_ece(probabilities, targets, num_bins=10):
  """Expected calibration error of a probability map against soft targets.

  Pixels are binned by their probability into `num_bins` equal bins of
  [0, 1] (`[0, 1/B), ..., [1 - 1/B, 1]`, by `floor(p B)`, so a fraction
  on an edge such as 3/10 opens its bin); ECE = sum_b (n_b / n) |mean
  probability in b - mean target in b|. With the targets the graders' mean
  (a pixel's fraction of graders marking it) and the probabilities the
  fraction of samples marking it, 0 means that where the model says p, a
  fraction p of the graders agree.

  Args:
    probabilities: float `[H, W]` (any shape) in [0, 1].
    targets: float, same shape, in [0, 1].
    num_bins: B.

  Returns:
    ECE as a float in [0, 1].
  """
  p, y = _checked_maps('pixel_ece', probabilities, targets)
  bins = np.minimum((p * num_bins).astype(np.int64), num_bins - 1)
  counts = np.bincount(bins, minlength=num_bins)
  gap = np.abs(np.bincount(bins, weights=p - y, minlength=num_bins))
  return float(gap.sum() / counts.sum())


# Where a pixel of probability p falls: 'left' bins [lo, hi) (the last
# [lo, 1]), as SSN's code; 'right' bins (lo, hi], p = 0 in none, as MoSE's.
BIN_SIDES = ('left', 'right')


def calibration_bins(probabilities, targets, num_bins=10, closed='left'):
  """Per-bin pixel counts and sums of a probability map and its targets.

  The bin edges are `np.linspace(0, 1, num_bins + 1)` (the peers' edges).
  Summing the result over images pools them (MoSE's test-set ECE).

  Args:
    probabilities: float `[H, W]` (any shape) in [0, 1].
    targets: float, same shape, in [0, 1] (the graders' mean).
    num_bins: B.
    closed: 'left' (`[lo, hi)`, 1 in the last bin) or 'right' (`(lo, hi]`,
      0 in no bin).

  Returns:
    float64 `[3, B + 1]`: rows pixel count, sum of probabilities, sum of
    targets; column b in 1..B the bin b, column 0 the pixels in no bin
    (p = 0 with 'right'; always empty with 'left').
  """
  if closed not in BIN_SIDES:
    raise ValueError(f'calibration_bins: closed must be one of {BIN_SIDES}, '
                     f'got {closed!r}.')
  p, y = _checked_maps('calibration_bins', probabilities, targets)
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  if closed == 'left':
    column = np.minimum(np.searchsorted(edges, p, side='right'), num_bins)
  else:
    column = np.searchsorted(edges, p, side='left')  # 0 only for p = 0.
  stats = [np.bincount(column, weights=w, minlength=num_bins + 1)
           for w in (np.ones_like(p), p, y)]
  return np.stack(stats).astype(np.float64)


def ece_from_bins(bins):
  """ECE = sum_b (n_b / n) |mean p in b - mean target in b| over bins
  1..B, with n every pixel counted (column 0 too).

  Args:
    bins: float `[3, B + 1]` from `calibration_bins` (or a sum of them).
  """
  bins = np.asarray(bins, np.float64)
  if bins.ndim != 2 or bins.shape[0] != 3 or bins.shape[1] < 2:
    raise ValueError(f'ece_from_bins: expected [3, B + 1] bin statistics, '
                     f'got shape {bins.shape}.')
  total = bins[0].sum()
  if total <= 0:
    raise ValueError('ece_from_bins: no pixels.')
  return float(np.abs(bins[1, 1:] - bins[2, 1:]).sum() / total)


def class_wise_ece(mean_probs, ground_truths, num_bins=10):
  """SSN's ECE of one image: the mean over classes of each class's ECE
  (bins `[lo, hi)`) of its mean softmax against the fraction of graders
  giving the pixel that class.

  Args:
    mean_probs: float `[H, W, K]`, the samples' mean softmax.
    ground_truths: int or bool `[M, H, W]` labels in `[0, K)`.
    num_bins: B.
  """
  mean_probs = np.asarray(mean_probs, np.float64)
  labels = np.asarray(ground_truths).astype(np.int64)
  if mean_probs.ndim != 3 or labels.ndim != 3 or (
      mean_probs.shape[:2] != labels.shape[1:]):
    raise ValueError(f'class_wise_ece: expected mean_probs [H, W, K] and '
                     f'ground_truths [M, H, W] of one size, got '
                     f'{mean_probs.shape} and {labels.shape}.')
  return float(np.mean([
      ece_from_bins(calibration_bins(mean_probs[..., k],
                                     np.mean(labels == k, axis=0), num_bins))
      for k in range(mean_probs.shape[-1])]))


def _checked_maps(name, probabilities, targets):
  p = np.asarray(probabilities, np.float64).ravel()
  y = np.asarray(targets, np.float64).ravel()
  if p.shape != y.shape or not p.size:
    raise ValueError(f'{name}: shapes differ or are empty: '
                     f'{np.shape(probabilities)} vs {np.shape(targets)}.')
  if not (np.all((p >= 0) & (p <= 1)) and np.all((y >= 0) & (y <= 1))):
    raise ValueError(f'{name}: probabilities and targets must be in [0, 1].')
  return p, y
