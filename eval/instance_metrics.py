"""Instance-task metrics: class-averaged IoU and SNEMI3D's adapted Rand error.

Functions take NumPy arrays for ONE image and return Python floats; the
evaluator averages over images (paper Appx. B.2, B.3;
docs/paper_notes.md#21-rand-error).

* `multiclass_iou`: a nan-mean of per-class IoUs that leaves correctly
  predicted absences out.
* `adapted_rand_scores` / `rand_error`: SNEMI3D's foreground-restricted
  adapted Rand error.
"""

import numpy as np


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
    script (docs/paper_notes.md#21-rand-error): those pixels leave the table
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
