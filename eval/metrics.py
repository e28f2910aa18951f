"""Segmentation metrics: IoU, GED^2, Hungarian-matched IoU and their forms.

All functions take NumPy arrays and return Python floats (or float64 arrays)
for ONE image; the evaluator averages over images. Conventions (paper Appx. B,
REFERENCE.md section 5):

* IoU is computed per image on boolean foreground masks. A correctly predicted
  absence (both masks empty) has IoU = 1, following the LIDC convention.
* The GED^2 distance is `d(a, b) = 1 - IoU(a, b)`.
* Instance tasks use `multiclass_iou` (a nan-mean that leaves correctly
  predicted absences out) and `rand_error` (SNEMI3D's adapted Rand error).

Uncertainty estimates (bootstrap) are in `eval.bootstrap`.
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


def multiclass_iou(pred, gt, classes, mask=None):
  """Per-image IoU nan-averaged over `classes` (instance tasks, Appx. B.2).

  A class absent from both `pred` and `gt` (a correctly predicted absence)
  is left out of the mean; a class present in only one of them scores 0.

  Args:
    pred: int `[H, W]` predicted class labels.
    gt: int `[H, W]` ground-truth class labels.
    classes: iterable of class labels to score (e.g. the stochastic classes).
    mask: optional `[H, W]`; pixels where `mask == 0` are ignored.

  Returns:
    The mean IoU over the classes present in `pred` or `gt` (within the mask),
    nan if there is none.
  """
  pred = np.asarray(pred)
  gt = np.asarray(gt)
  if pred.shape != gt.shape:
    raise ValueError(f'multiclass_iou: pred and gt shapes differ: '
                     f'{pred.shape} vs {gt.shape}.')
  valid = np.ones(pred.shape, bool) if mask is None else np.asarray(mask) != 0
  if valid.shape != pred.shape:
    raise ValueError(f'multiclass_iou: mask shape {valid.shape} differs from '
                     f'the label shape {pred.shape}.')
  classes = list(classes)
  if not classes:
    raise ValueError('multiclass_iou: classes is empty.')
  ious = []
  for label in classes:
    pred_c = (pred == label) & valid
    gt_c = (gt == label) & valid
    union = np.count_nonzero(pred_c | gt_c)
    if union:
      ious.append(np.count_nonzero(pred_c & gt_c) / union)
  return float(np.mean(ious)) if ious else float('nan')


PRED_ZERO_CONVENTIONS = ('snemi3d', 'singletons', 'segment')


def adapted_rand_scores(pred, gt, *, pred_zero='snemi3d',
                        include_self_pairs=True):
  """Foreground-restricted adapted Rand (SNEMI3D): (error, precision, recall).

  Only pixels with `gt != 0` count. Over those pixels, with n_ij the number of
  pixels labelled i in `gt` and j in `pred`, and f(n) the number of ordered
  pixel pairs inside a segment of n pixels (n^2 with self pairs, else
  n (n - 1)):

    precision = sum_ij f(n_ij) / sum_j f(n_.j)   (pred pairs that gt joins)
    recall    = sum_ij f(n_ij) / sum_i f(n_i.)   (gt pairs that pred joins)
    error     = 1 - 2 P R / (P + R).

  `pred_zero` says what a pred label 0 inside the gt foreground (c such
  pixels, n pixels in the whole image) means:
  * `'snemi3d'` (default): exactly the SNEMI3D challenge's `adapted_rand`
    script (REFERENCE.md section 8): those pixels leave the contingency table
    and add `c / n` to both the pred and the joint pair sums (the script's
    `sum(c) / n`); needs `include_self_pairs=True`, the script's p_ij^2.
  * `'singletons'`: each such pixel is its own segment with its one self
    pair, adding `c` (not `c / n`) to both sums (differs from the script by
    a relative amount of order c / sum_ij n_ij^2).
  * `'segment'`: pred label 0 is an ordinary segment (scikit-image).
  `include_self_pairs=False` drops each pixel's pair with itself (scikit-image
  subtracts them). `skimage.metrics.adapted_rand_error(gt, pred)` (default
  `ignore_labels=(0,)`, `alpha=0.5`) equals this with `pred_zero='segment',
  include_self_pairs=False`; note that skimage calls our recall its
  "precision" and vice versa (its row sums are the gt sizes), while the error
  is symmetric.

  Args:
    pred: int `[H, W]` (any shape) predicted instance ids.
    gt: int, same shape, ground-truth instance ids; 0 = ignored.
    pred_zero: one of `PRED_ZERO_CONVENTIONS`, see above.
    include_self_pairs: see above.

  Returns:
    (error, precision, recall) as floats; all nan when there is no gt
    foreground pixel (or, without self pairs, no pixel pair at all).
  """
  pred = np.asarray(pred)
  gt = np.asarray(gt)
  if pred.shape != gt.shape:
    raise ValueError(f'rand_error: pred and gt shapes differ: {pred.shape} vs '
                     f'{gt.shape}.')
  for name, labels in (('pred', pred), ('gt', gt)):
    if not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(f'rand_error: {name} must hold integer labels, got '
                       f'dtype {labels.dtype}.')
  if pred_zero not in PRED_ZERO_CONVENTIONS:
    raise ValueError(f'rand_error: pred_zero must be one of '
                     f'{PRED_ZERO_CONVENTIONS}, got {pred_zero!r}.')
  if pred_zero == 'snemi3d' and not include_self_pairs:
    raise ValueError("rand_error: pred_zero='snemi3d' is the challenge "
                     'script, which counts self pairs; it needs '
                     'include_self_pairs=True.')
  foreground = gt.ravel() != 0
  gt_fg = gt.ravel()[foreground].astype(np.int64)
  pred_fg = pred.ravel()[foreground].astype(np.int64)
  if gt_fg.size == 0:
    return float('nan'), float('nan'), float('nan')

  def pairs(sizes):
    sizes = sizes.astype(np.float64)
    return float(np.sum(sizes * sizes if include_self_pairs else
                        sizes * (sizes - 1)))

  _, gt_sizes = np.unique(gt_fg, return_counts=True)
  singleton_pairs = 0.0
  if pred_zero != 'segment':
    assigned = pred_fg != 0
    num_unassigned = int(np.count_nonzero(~assigned))
    gt_fg, pred_fg = gt_fg[assigned], pred_fg[assigned]
    if pred_zero == 'snemi3d':
      singleton_pairs = num_unassigned / gt.size  # The script's sum(c) / n.
    elif include_self_pairs:
      singleton_pairs = float(num_unassigned)
  _, pred_index, pred_sizes = np.unique(pred_fg, return_inverse=True,
                                        return_counts=True)
  # Joint segments: unique (gt, pred) label pairs, keyed by dense indices.
  _, gt_index = np.unique(gt_fg, return_inverse=True)
  joint_key = gt_index.astype(np.int64) * (pred_sizes.size + 1) + pred_index
  _, joint_sizes = np.unique(joint_key, return_counts=True)

  joint_pairs = pairs(joint_sizes) + singleton_pairs
  pred_pairs = pairs(pred_sizes) + singleton_pairs
  gt_pairs = pairs(gt_sizes)
  if pred_pairs + gt_pairs == 0:
    return float('nan'), float('nan'), float('nan')
  precision = joint_pairs / pred_pairs if pred_pairs else float('nan')
  recall = joint_pairs / gt_pairs if gt_pairs else float('nan')
  # F = 2PR / (P + R) = 2 joint / (pred + gt), defined even if P or R is not.
  error = 1.0 - 2.0 * joint_pairs / (pred_pairs + gt_pairs)
  return float(error), float(precision), float(recall)


def rand_error(pred, gt, *, pred_zero='snemi3d', include_self_pairs=True):
  """SNEMI3D adapted Rand error, 1 - F-score; see `adapted_rand_scores`."""
  return adapted_rand_scores(pred, gt, pred_zero=pred_zero,
                             include_self_pairs=include_self_pairs)[0]
