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
  against the graders' mean (our definition; none of the checked sources
  computes one for LIDC).

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
  """Foreground probability `[..., H, W]` -> `[..., H, W, 2]` (bg, fg)."""
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
  [0, 1] (`[0, 1/B), ..., [1 - 1/B, 1]`); ECE = sum_b (n_b / n) |mean
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
  p = np.asarray(probabilities, np.float64).ravel()
  y = np.asarray(targets, np.float64).ravel()
  if p.shape != y.shape or not p.size:
    raise ValueError(f'pixel_ece: shapes differ or are empty: '
                     f'{np.shape(probabilities)} vs {np.shape(targets)}.')
  if min(p.min(), y.min()) < 0 or max(p.max(), y.max()) > 1:
    raise ValueError('pixel_ece: probabilities and targets must be in [0, 1].')
  bins = np.minimum((p * num_bins).astype(np.int64), num_bins - 1)
  counts = np.bincount(bins, minlength=num_bins)
  gap = np.abs(np.bincount(bins, weights=p - y, minlength=num_bins))
  return float(gap.sum() / counts.sum())
