"""Analyses of the synthetic study (`experiments/study/synthetic.py`).

* Pooling over seeds: per-image metric values of several trained seeds are
  summarised with `eval.bootstrap.pooled_bootstrap` (paper Table 1: "mean and
  std from ... random inits and 1000 bootstraps").
* Per-level analysis: a lesion sample is decoded into the grader
  style and the presence of each lesion, using the image's generating
  parameters (v1 `LesionParams` or v2 `LesionParamsV2`;
  `eval.lesion_styles.decode_lesion_samples`); sampling only one
  latent level at a time (the others at the prior mean) then shows which
  factor each level carries.

Shape glossary: `S` samples, `N` lesions, `H, W` image size, `B` images.
"""
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from datasets.synthetic_lesions import generator
from eval import bootstrap
from eval import lesion_styles


# One decoding for the study and the evaluator (`eval.lesion_styles`).
decode_lesion_samples = lesion_styles.decode_lesion_samples


def style_disagreement(styles: np.ndarray) -> float:
  """P(two distinct samples have different styles), over defined styles.

  Args:
    styles: int `[S]`, -1 = undefined (dropped).

  Returns:
    The fraction of ordered pairs of distinct samples with different styles;
    nan with fewer than two defined styles.
  """
  styles = np.asarray(styles)
  styles = styles[styles >= 0]
  n = len(styles)
  if n < 2:
    return float('nan')
  counts = np.bincount(styles).astype(np.float64)
  return float(1 - np.sum(counts * (counts - 1)) / (n * (n - 1)))


def presence_disagreement(present: np.ndarray) -> float:
  """P(a lesion's presence differs between two distinct samples), averaged
  over the image's lesions; `present` bool `[S, N]` (nan without lesions)."""
  present = np.asarray(present, bool)
  n = len(present)
  if n < 2 or present.shape[1] == 0:
    return float('nan')
  k = present.sum(axis=0).astype(np.float64)
  return float(np.mean(2 * k * (n - k) / (n * (n - 1))))


def true_disagreement(params) -> Dict[str, float]:
  """The per-level scores of the true distribution (all levels sampled,
  perfect decoding), for v1 and v2 alike.

  Style and presence are independent, so P(two gradings' styles differ)
  given that both have a style (a present lesion) is `1 - sum_s p_s^2`;
  a lesion's presence differs with `2 p_i (1 - p_i)` (averaged over the
  lesions); the style is undefined (nothing segmented) with
  `prod_i (1 - p_i)`.
  """
  style_probs = np.asarray(params.style_probs, np.float64)
  style_probs = style_probs / style_probs.sum()
  lesion_probs = np.asarray(params.probs, np.float64)
  return {'p_style_differs': float(1 - np.sum(style_probs**2)),
          'p_presence_differs': float(np.mean(2 * lesion_probs *
                                              (1 - lesion_probs))),
          'frac_style_undefined': float(np.prod(1 - lesion_probs))}


def level_settings(num_latent_levels: int) -> Dict[str, Tuple[bool, ...]]:
  """`name -> mean_levels`: each level sampled alone (`level_<l>`, 0 = the
  coarsest, most global), then every level sampled (`all_levels`)."""
  settings = {}
  for level in range(num_latent_levels):
    settings[f'level_{level}'] = tuple(l != level
                                       for l in range(num_latent_levels))
  settings['all_levels'] = (False,) * num_latent_levels
  return settings


def _scores(styles, present) -> Dict[str, float]:
  return {'p_style_differs': style_disagreement(styles),
          'p_presence_differs': presence_disagreement(present),
          'frac_style_undefined': float(np.mean(styles < 0))}


def prior_labels_by_batch(model, params,
                          examples: Sequence[Mapping[str, Any]], *,
                          num_samples: int, batch_size: int, seed: int
                          ) -> Iterator[Tuple[Sequence[Mapping[str, Any]],
                                              np.ndarray]]:
  """Yields `(batch, labels)`: `batch_size` examples at a time and the
  argmax labels of `num_samples` prior samples of their images, int
  `[S, B, H, W]`. The key is split once per batch from `PRNGKey(seed)`, so
  every analysis that uses this draws the same samples for a seed."""
  sample = jax.jit(model.sample, static_argnums=3)
  key = jax.random.PRNGKey(seed)
  for start in range(0, len(examples), batch_size):
    batch = examples[start:start + batch_size]
    images = jnp.asarray(np.stack([e['image'] for e in batch]))
    key, batch_key = jax.random.split(key)
    yield batch, np.asarray(jnp.argmax(
        sample(params, batch_key, images, num_samples), axis=-1))


def per_level_per_image(model, params, examples: Sequence[Mapping[str, Any]],
                        *, num_samples: int, batch_size: int, seed: int,
                        presence_threshold: float
                        ) -> Dict[str, Dict[str, np.ndarray]]:
  """Per-image disagreement scores for every level setting, and references.

  Args:
    model: a `hpunet_jax.models.Model` with `num_latent_levels >= 1`.
    params: its trained parameters.
    examples: synthetic-lesions eval examples (`image`, `lesion_params`).
    num_samples: samples per image and setting.
    batch_size: images sampled at once.
    seed: seeds the model's and the oracle's samples.
    presence_threshold: see `decode_lesion_samples`.

  Returns:
    `setting -> metric -> float64 [num_images]` (nan where undefined) for the
    settings of `level_settings`, plus `oracle` (samples of the true
    distribution through the same decoder) and `truth` (`true_disagreement`).
  """
  settings = level_settings(model.num_latent_levels)
  sample = jax.jit(model.sample, static_argnums=3)
  key = jax.random.PRNGKey(seed)
  np_rng = np.random.default_rng(seed)
  out = {name: {} for name in list(settings) + ['oracle', 'truth']}

  def add(setting, values):
    for metric, value in values.items():
      out[setting].setdefault(metric, []).append(value)

  for start in range(0, len(examples), batch_size):
    batch = examples[start:start + batch_size]
    images = jnp.asarray(np.stack([e['image'] for e in batch]))
    key, batch_key = jax.random.split(key)
    for name, mean_levels in settings.items():
      # The same key for every setting: only which levels vary differs.
      labels = np.asarray(jnp.argmax(sample(
          params, batch_key, images, num_samples,
          jnp.asarray(mean_levels)), axis=-1))  # [S, B, H, W]
      for i, example in enumerate(batch):
        add(name, _scores(*decode_lesion_samples(
            labels[:, i] == 1, example['lesion_params'], presence_threshold)))
    for example in batch:
      lesion_params = example['lesion_params']
      oracle = generator.oracle_sample(lesion_params, np_rng, num_samples)
      add('oracle', _scores(*decode_lesion_samples(oracle > 0, lesion_params,
                                                   presence_threshold)))
      add('truth', true_disagreement(lesion_params))
  return {setting: {m: np.asarray(v, np.float64) for m, v in values.items()}
          for setting, values in out.items()}


def pool_seeds(per_image_by_seed: Sequence[Mapping[str, np.ndarray]],
               num_resamples: int, rng_seed: int) -> Dict[str, float]:
  """`name`, `name_std` of the pooled bootstrap over seeds, per metric.

  Metrics missing from a seed, and non-finite per-image values (images where
  a metric is undefined), are left out, as the evaluator does for one seed.
  Only one value per image is pooled: per-image statistics of another shape
  (e.g. ECE bin counts `[num_images, 3, bins]`, scored once over the whole
  set) are not per-image metrics and are left out.

  Args:
    per_image_by_seed: per seed, `metric -> float [num_images]`.
    num_resamples: bootstrap resamples per seed.
    rng_seed: seeds the resampling.
  """
  names = sorted({name for values in per_image_by_seed for name in values})
  pooled = {}
  for name in names:
    seeds = [np.asarray(values[name], np.float64)
             for values in per_image_by_seed if name in values]
    if any(v.ndim != 1 for v in seeds):
      continue
    seeds = [v[np.isfinite(v)] for v in seeds]
    seeds = [v for v in seeds if v.size]
    if not seeds:
      continue
    mean, std = bootstrap.pooled_bootstrap(seeds, num_resamples, rng=rng_seed)
    pooled[name], pooled[name + '_std'] = mean, std
  return pooled


def pool_summaries(summaries: Sequence[Mapping[str, float]]
                   ) -> Dict[str, float]:
  """Pools per-seed bootstrap summaries (`name`, `name_std`) without their
  per-image values: the mean and std of the mixture of the seeds' bootstrap
  distributions, i.e. what `pooled_bootstrap` estimates (used for the oracle
  rows, whose per-image values the evaluator does not keep)."""
  names = sorted({k for s in summaries for k in s if not k.endswith('_std')
                  and isinstance(s[k], (int, float))})
  pooled = {}
  for name in names:
    rows = [s for s in summaries if name in s]
    means = np.array([s[name] for s in rows], np.float64)
    stds = np.array([s.get(name + '_std', 0.0) for s in rows], np.float64)
    pooled[name] = float(means.mean())
    pooled[name + '_std'] = float(np.sqrt(np.mean(stds**2) + means.var()))
  return pooled


def format_table(rows: Mapping[str, Mapping[str, float]],
                 names: Sequence[str]) -> str:
  """`mean ± std` cells, one row per entry of `rows`, one column per name
  (`-` where a row lacks it)."""
  widths = [max(18, len(n) + 2) for n in names]
  lines = [f"{'':16s}" + ''.join(f'{n:>{w}s}' for n, w in zip(names, widths))]
  for label, values in rows.items():
    cells = []
    for name in names:
      value = values.get(name)
      if isinstance(value, float) and np.isfinite(value):
        cells.append(f"{value:8.4f} ±{values.get(name + '_std', 0.0):7.4f}")
      else:
        cells.append('-')
    lines.append(f'{label:16s}' +
                 ''.join(f'{c:>{w}s}' for c, w in zip(cells, widths)))
  return '\n'.join(lines)


def metric_columns(rows: Sequence[Mapping[str, Any]],
                   preferred: Sequence[str]) -> List[str]:
  """The preferred metric names that some row has, then its other metrics
  (float values with a `_std` twin) in sorted order."""
  present = {k for row in rows for k, v in row.items()
             if isinstance(v, float) and k + '_std' in row}
  return ([n for n in preferred if n in present] +
          sorted(present - set(preferred)))


def per_level_figure(path: str, summary: Mapping[str, Mapping[str, float]]
                     ) -> str:
  """Bar chart of P(style differs) and P(presence differs) per setting.

  Args:
    path: PNG to write.
    summary: `setting -> {p_style_differs, p_presence_differs, ..._std}`.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  settings = list(summary)
  x = np.arange(len(settings))
  fig, ax = plt.subplots(figsize=(1.2 * len(settings) + 2, 3))
  for offset, metric, label in ((-0.2, 'p_style_differs', 'grader style'),
                                (0.2, 'p_presence_differs',
                                 'lesion presence')):
    means = [summary[s].get(metric, np.nan) for s in settings]
    stds = [summary[s].get(metric + '_std', 0.0) for s in settings]
    ax.bar(x + offset, means, 0.4, yerr=stds, label=label)
  ax.set_xticks(x, [s.replace('_', ' ') for s in settings], fontsize=8)
  ax.set_ylabel('P(differs between\ntwo samples)', fontsize=8)
  ax.set_title('Sampling one latent level (level 0 = most global), the rest '
               'at the prior mean', fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
