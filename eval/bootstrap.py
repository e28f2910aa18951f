"""Bootstrap uncertainty for per-image metrics (paper Table 1).

The paper reports "mean and std from 10 random inits and 1000 bootstraps with
replacement". `pooled_bootstrap` implements that as follows: for every trained
seed s, draw `num_resamples` bootstrap resamples of that seed's test images
(with replacement, as many images as it has) and take each resample's mean;
pool the S x num_resamples resampled means of all seeds and report their mean
and standard deviation (ddof = 0). The std therefore covers both the spread
between seeds and the test-set sampling noise within each seed.
`bootstrap_mean_std` is the single-seed case. A metric pooled over the
images (a score of per-image statistics summed, e.g. MoSE's ECE) has
`pooled_statistic_std` instead.
"""

import numpy as np


def _as_values(values, name):
  """Validates a 1-D array of finite per-image values."""
  values = np.asarray(values, dtype=np.float64)
  if values.ndim != 1 or values.size == 0:
    raise ValueError(f'{name} must be a non-empty 1-D array of per-image '
                     f'values, got shape {values.shape}.')
  num_bad = int(np.count_nonzero(~np.isfinite(values)))
  if num_bad:
    raise ValueError(f'{name} holds {num_bad} non-finite values (nan or inf); '
                     f'drop the images where the metric is undefined first.')
  return values


def _resampled_means(values, num_resamples, rng):
  """Means of `num_resamples` resamples with replacement: float64 `[R]`."""
  indices = rng.integers(0, values.size, size=(num_resamples, values.size))
  return values[indices].mean(axis=1)


def _check_resamples(num_resamples):
  if int(num_resamples) != num_resamples or num_resamples < 1:
    raise ValueError(f'num_resamples must be a positive integer, got '
                     f'{num_resamples}.')
  return int(num_resamples)


def bootstrap_mean_std(per_image_values, num_resamples=1000, *, rng):
  """Mean and std of the bootstrap means of one model's per-image values.

  Args:
    per_image_values: float `[num_images]`, one metric value per image (all
      finite).
    num_resamples: number of bootstrap resamples (each of num_images images
      drawn with replacement).
    rng: a `np.random.Generator` or an int seed.

  Returns:
    (mean, std) of the `num_resamples` resampled means, as floats.
  """
  return pooled_bootstrap([per_image_values], num_resamples, rng=rng)


def pooled_bootstrap(values_per_seed, num_resamples=1000, *, rng):
  """Mean and std of bootstrap means pooled over trained seeds.

  See the module docstring for the exact definition. Seeds are resampled
  independently, so they may have different numbers of images.

  Args:
    values_per_seed: list of float `[num_images_s]` arrays, one per seed.
    num_resamples: bootstrap resamples per seed.
    rng: a `np.random.Generator` or an int seed.

  Returns:
    (mean, std) over the len(values_per_seed) * num_resamples resampled
    means, as floats.
  """
  num_resamples = _check_resamples(num_resamples)
  if len(values_per_seed) == 0:
    raise ValueError('pooled_bootstrap: values_per_seed is empty.')
  rng = np.random.default_rng(rng)
  means = np.concatenate([
      _resampled_means(_as_values(values, f'values_per_seed[{seed}]'),
                       num_resamples, rng)
      for seed, values in enumerate(values_per_seed)])
  return float(means.mean()), float(means.std())


def pooled_statistic_std(per_image_stats, score, num_resamples=1000, *, rng):
  """Bootstrap std of a metric scored on statistics summed over the images.

  Args:
    per_image_stats: float `[num_images, ...]`, one statistic per image.
    score: maps a sum of statistics (`[...]`) to the metric.
    num_resamples: bootstrap resamples (images drawn with replacement).
    rng: a `np.random.Generator` or an int seed.

  Returns:
    The std (ddof = 0) of `score` over the resamples' summed statistics.
  """
  num_resamples = _check_resamples(num_resamples)
  stats = np.asarray(per_image_stats, np.float64)
  if stats.ndim < 1 or not len(stats) or not np.all(np.isfinite(stats)):
    raise ValueError(f'pooled_statistic_std: per_image_stats must be finite '
                     f'with a leading image axis, got shape {stats.shape}.')
  num = len(stats)
  draws = np.random.default_rng(rng).integers(0, num,
                                              size=(num_resamples, num))
  # How often each image is drawn in each resample: [R, num_images].
  counts = np.stack([np.bincount(d, minlength=num) for d in draws])
  sums = counts @ stats.reshape(num, -1)
  return float(np.std([score(s.reshape(stats.shape[1:])) for s in sums]))
