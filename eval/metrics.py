"""Segmentation metrics: IoU, GED^2, Hungarian-matched IoU and their forms.

All functions take NumPy arrays and return Python floats (or float64 arrays)
for ONE image; the evaluator averages over images. Conventions (paper Appx. B;
docs/paper_notes.md#17-iou-conventions and the sections after it):

* IoU is computed per image on boolean foreground masks. A correctly predicted
  absence (both masks empty) has IoU = 1, following the LIDC convention.
* The GED^2 distance is `d(a, b) = 1 - IoU(a, b)`.

The instance tasks' metrics (`multiclass_iou`, `rand_error`) are in
`eval.instance_metrics`; uncertainty estimates (bootstrap) in `eval.bootstrap`.
"""

import math

import numpy as np
from scipy import optimize
from scipy import sparse


def _as_mask_stack(masks, name):
  """Returns `masks` as a bool array `[N, P]` (spatial dims flattened)."""
  masks = np.asarray(masks)
  if masks.dtype != np.bool_:
    raise ValueError(f'{name} must be a boolean mask stack [N, H, W], got '
                     f'dtype {masks.dtype}.')
  if masks.ndim < 2:
    raise ValueError(f'{name} must have shape [N, H, W] (a stack of masks), '
                     f'got shape {masks.shape}.')
  if masks.shape[0] == 0:
    raise ValueError(f'{name} is an empty stack (shape {masks.shape}).')
  return masks.reshape(masks.shape[0], -1)


def iou(a, b):
  """IoU of two boolean masks of equal shape; both empty -> 1.0.

  Args:
    a: bool array, any shape (e.g. `[H, W]`).
    b: bool array, same shape as `a`.

  Returns:
    |a & b| / |a | b| as a float, 1.0 when both masks are empty.
  """
  a = np.asarray(a)
  b = np.asarray(b)
  if a.dtype != np.bool_ or b.dtype != np.bool_:
    raise ValueError(f'iou expects boolean masks, got dtypes {a.dtype} and '
                     f'{b.dtype}.')
  if a.shape != b.shape:
    raise ValueError(f'iou: mask shapes differ: {a.shape} vs {b.shape}.')
  union = np.count_nonzero(a | b)
  if union == 0:
    return 1.0
  return np.count_nonzero(a & b) / union


def pairwise_iou(x, y):
  """IoU between every mask of `x` and every mask of `y`.

  Intersections come from one matrix product of the flattened masks,
  restricted to pixels set in some mask (exact: float32 holds every integer
  count below 2^24, float64 is used above).

  Args:
    x: bool `[N, H, W]` (any trailing spatial shape).
    y: bool `[M, H, W]`, same spatial shape as `x`.

  Returns:
    float64 `[N, M]`; entries where both masks are empty are 1.
  """
  x_flat = _as_mask_stack(x, 'x')
  y_flat = _as_mask_stack(y, 'y')
  if np.shape(x)[1:] != np.shape(y)[1:]:
    raise ValueError(f'pairwise_iou: spatial shapes differ: '
                     f'{np.shape(x)[1:]} vs {np.shape(y)[1:]}.')
  return _flat_pairwise_iou(x_flat, y_flat)


def _flat_pairwise_iou(x_flat, y_flat=None):
  """`pairwise_iou` of bool `[N, P]` and `[M, P]` (y None: x with itself)."""
  # Pixels empty in every mask add nothing: drop them (lesions are small).
  occupied = x_flat.any(axis=0)
  if y_flat is not None:
    occupied |= y_flat.any(axis=0)
  if np.count_nonzero(occupied) < occupied.size // 2:
    columns = np.flatnonzero(occupied)
    x_flat = x_flat[:, columns]
    y_flat = None if y_flat is None else y_flat[:, columns]
  dtype = np.float32 if x_flat.shape[1] < 2**24 else np.float64
  x_float = x_flat.astype(dtype)
  y_float = x_float if y_flat is None else y_flat.astype(dtype)
  # Float sums and products of 0/1 values are exact integers below 2^24.
  intersection = (x_float @ y_float.T).astype(np.float64)
  x_area = x_float.sum(axis=1).astype(np.float64)
  y_area = y_float.sum(axis=1).astype(np.float64)
  union = x_area[:, None] + y_area[None, :] - intersection
  both_empty = union == 0
  return np.where(both_empty, 1.0,
                  intersection / np.where(both_empty, 1.0, union))


def _within_set_mean(distances, include_self_pairs, name):
  """Mean of a square distance matrix, with or without its diagonal."""
  n = distances.shape[0]
  if include_self_pairs:
    return distances.mean()
  if n < 2:
    raise ValueError(f'GED without self pairs needs at least 2 {name}, got '
                     f'{n}.')
  # d(x, x) = 1 - IoU(x, x) = 0, so the diagonal adds nothing to the sum.
  return (distances.sum() - np.trace(distances)) / (n * (n - 1))


def generalized_energy_distance(samples, ground_truths,
                                include_self_pairs=True):
  """GED^2 between model samples and ground truths of one image, d = 1 - IoU.

  `GED = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')]`, with expectations over the
  empirical sets. With `include_self_pairs=True` the within-set expectations
  average all N^2 (M^2) ordered pairs including i == j (as the usual GED code
  does, and equal to the weighted form with uniform weights); with
  `False` only the N (N - 1) pairs with i != j (the unbiased U-statistic; it
  needs N, M >= 2).

  Args:
    samples: bool `[N, H, W]`.
    ground_truths: bool `[M, H, W]`.
    include_self_pairs: whether within-set means include i == j pairs.

  Returns:
    GED^2 as a float.
  """
  samples_flat = _as_mask_stack(samples, 'samples')
  truths_flat = _as_mask_stack(ground_truths, 'ground_truths')
  if np.shape(samples)[1:] != np.shape(ground_truths)[1:]:
    raise ValueError(f'samples and ground_truths differ in spatial shape: '
                     f'{np.shape(samples)[1:]} vs '
                     f'{np.shape(ground_truths)[1:]}.')
  n = samples_flat.shape[0]
  # One Gram matrix over both sets gives all three distance blocks.
  distances = 1.0 - _flat_pairwise_iou(
      np.concatenate([samples_flat, truths_flat]))
  cross = distances[:n, n:].mean()
  within_samples = _within_set_mean(distances[:n, :n], include_self_pairs,
                                    'samples')
  within_truths = _within_set_mean(distances[n:, n:], include_self_pairs,
                                   'ground_truths')
  return float(2.0 * cross - within_samples - within_truths)


def _probabilities(weights, count, name):
  """Validates a probability vector of length `count` (None -> uniform)."""
  if weights is None:
    return np.full(count, 1.0 / count)
  weights = np.asarray(weights, dtype=np.float64)
  if weights.shape != (count,):
    raise ValueError(f'{name} must have shape ({count},), got '
                     f'{weights.shape}.')
  if not np.all(np.isfinite(weights)) or np.any(weights < 0):
    raise ValueError(f'{name} must be finite and non-negative, got '
                     f'{weights}.')
  if not np.isclose(weights.sum(), 1.0, rtol=0.0, atol=1e-6):
    raise ValueError(f'{name} must sum to 1, got sum {weights.sum()}.')
  return weights


def weighted_generalized_energy_distance(samples, sample_weights, modes,
                                         mode_probs):
  """GED^2 against a known ground-truth distribution (d = 1 - IoU).

  The true distribution puts probability `mode_probs[k]` on `modes[k]`; the
  model distribution puts `sample_weights[i]` on `samples[i]` (None = 1/N
  each). Every expectation is the exact one for independent draws:

    GED = 2 sum_ik w_i p_k d(s_i, m_k) - sum_ij w_i w_j d(s_i, s_j)
          - sum_kl p_k p_l d(m_k, m_l),

  so the within-set terms include the self pairs (i == j, k == l), which two
  independent draws hit with probability sum_i w_i^2. With uniform weights this
  equals `generalized_energy_distance(..., include_self_pairs=True)`, and it is
  0 when both distributions are the same.

  Args:
    samples: bool `[N, H, W]`.
    sample_weights: float `[N]` summing to 1, or None for uniform.
    modes: bool `[M, H, W]`, the distinct ground-truth segmentations.
    mode_probs: float `[M]` summing to 1.

  Returns:
    GED^2 as a float.
  """
  num_samples = _as_mask_stack(samples, 'samples').shape[0]
  num_modes = _as_mask_stack(modes, 'modes').shape[0]
  w = _probabilities(sample_weights, num_samples, 'sample_weights')
  p = _probabilities(mode_probs, num_modes, 'mode_probs')
  cross = w @ (1.0 - pairwise_iou(samples, modes)) @ p
  within_samples = w @ (1.0 - pairwise_iou(samples, samples)) @ w
  within_modes = p @ (1.0 - pairwise_iou(modes, modes)) @ p
  return float(2.0 * cross - within_samples - within_modes)


def hungarian_matched_iou(samples, ground_truths):
  """Hungarian-matched IoU (paper Appx. B.1).

  Both sets are duplicated to their least common multiple size L (each sample
  L / N times, each ground truth L / M times), matched 1:1 maximising the total
  IoU (`scipy.optimize.linear_sum_assignment`), and the L matched IoUs are
  averaged.

  Args:
    samples: bool `[N, H, W]`.
    ground_truths: bool `[M, H, W]`.

  Returns:
    The mean matched IoU as a float in [0, 1].
  """
  iou_matrix = pairwise_iou(samples, ground_truths)
  n, m = iou_matrix.shape
  size = math.lcm(n, m)
  duplicated = np.tile(iou_matrix, (size // n, size // m))
  rows, cols = optimize.linear_sum_assignment(duplicated, maximize=True)
  return float(duplicated[rows, cols].mean())


def weighted_hungarian_matched_iou(samples, modes, mode_probs,
                                   sample_weights=None):
  """Hungarian-matched IoU against a known distribution, as optimal transport.

  The matching becomes a coupling T between the model distribution (weight
  `sample_weights[i]`, default 1/N, on `samples[i]`) and the true one
  (`mode_probs[k]` on `modes[k]`): T >= 0 with row sums w and column sums p,
  chosen to maximise the expected IoU sum_ik T_ik IoU(s_i, m_k) (a linear
  program solved with `scipy.optimize.linprog`, HiGHS). The result is that
  maximal expected IoU.

  When every w_i and p_k is a multiple of 1/L, the transport polytope has an
  optimal vertex with T_ik in multiples of 1/L (its constraint matrix is
  totally unimodular), which is exactly a 1:1 matching of the sets duplicated
  to L elements: with uniform weights this equals `hungarian_matched_iou`.

  Args:
    samples: bool `[N, H, W]`.
    modes: bool `[M, H, W]`.
    mode_probs: float `[M]` summing to 1.
    sample_weights: float `[N]` summing to 1, or None for uniform.

  Returns:
    The maximal expected IoU as a float in [0, 1].
  """
  iou_matrix = pairwise_iou(samples, modes)
  n, m = iou_matrix.shape
  w = _probabilities(sample_weights, n, 'sample_weights')
  p = _probabilities(mode_probs, m, 'mode_probs')
  # Variables T_ik in row-major order (index i * m + k).
  row_sums = sparse.kron(sparse.eye(n), np.ones((1, m)))
  col_sums = sparse.kron(np.ones((1, n)), sparse.eye(m))
  constraints = sparse.vstack([row_sums, col_sums]).tocsc()
  # Rescale p so both marginals have exactly the same total (linprog's
  # equality constraints are otherwise infeasible by rounding).
  targets = np.concatenate([w, p * (w.sum() / p.sum())])
  result = optimize.linprog(
      -iou_matrix.ravel(), A_eq=constraints, b_eq=targets, bounds=(0, None),
      method='highs')
  if result.status != 0:
    raise RuntimeError(f'weighted_hungarian_matched_iou: linprog failed: '
                       f'{result.message}')
  return float(min(1.0, -result.fun))
