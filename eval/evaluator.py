"""The evaluator shared by the trainer's final summary and `eval.run_metrics`.

For every test image it samples with encoder-once sampling, reconstructs the
ground truths from the posterior means, and scores them with `eval.metrics`
(paper Appx. B); per-image values are summarised with the bootstrap of
`eval.bootstrap` (mean and std of 1000 resampled means).

Tasks (from `config.data.name`):
- lesions (`synthetic_lesions`, `lidc_crops`): binary foreground (class 1).
  `iou_rec` (posterior-mean reconstruction of every grader), `ged_16`,
  `ged_100` (GED^2 against the graders, self pairs included, as the usual
  code), `hm_iou` (16 samples vs the graders), `hm_iou_subset_b` (LIDC). With
  known modes (synthetic): `exact_ged` (100 samples vs the exact distribution)
  and `exact_hm_iou` (16 samples), and an `oracle` row: samples drawn from the
  true distribution, scored the same way.
- instances (`synthetic_cells`, `snemi3d`, and the cars of `cityscapes_cars`):
  `iou_rec` (nan-mean over the stochastic classes of a per-image random
  remapping of the ids, as in training), `rand_error` of the Hamming clustering
  of 16 samples (Appx. G/H) against the instance ids.
"""
import json
import math
import os
from typing import Any, Dict, Iterable, List, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from datasets import pipeline
from eval import bootstrap
from eval import clustering
from eval import metrics

LESION_TASKS = ('synthetic_lesions', 'lidc_crops')
INSTANCE_TASKS = ('synthetic_cells', 'snemi3d', 'cityscapes_cars')


class EvalResult(NamedTuple):
  """Summary metrics and the first few images' arrays (for figures).

  Attributes:
    metrics: flat dict, `<name>` and `<name>_std`; `oracle` where known.
    per_image: dict name -> float64 `[num_images]`.
    examples: list of dicts (image, targets, samples, reconstructions).
  """
  metrics: Dict[str, Any]
  per_image: Dict[str, np.ndarray]
  examples: List[Dict[str, np.ndarray]]


def _batches(examples: Iterable[dict], batch_size: int):
  batch = []
  for example in examples:
    batch.append(example)
    if len(batch) == batch_size:
      yield batch
      batch = []
  if batch:
    yield batch


def _summarise(per_image: Dict[str, List[float]], num_resamples: int,
               seed: int) -> Dict[str, float]:
  out = {}
  for name, values in per_image.items():
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
      continue
    mean, std = bootstrap.bootstrap_mean_std(values, num_resamples, rng=seed)
    out[name], out[name + '_std'] = float(mean), float(std)
  return out


def _remap_ids(instances: np.ndarray, num_ids: int,
               rng: np.random.Generator) -> np.ndarray:
  """Instance ids -> random labels 1..num_ids (0 stays background)."""
  ids = np.unique(instances)
  ids = ids[ids != 0]
  lookup = dict(zip(ids.tolist(), rng.integers(1, num_ids + 1, ids.size)))
  lookup[0] = 0
  return np.vectorize(lookup.get, otypes=[np.int32])(instances)


class Evaluator:
  """Samples and scores a model on one split of `config.data`.

  Config keys read (`config.eval`): `batch_size`, `num_samples` (largest
  sample count, 100), `num_resamples` (bootstrap, 1000), `num_examples`
  (None = the whole split), `num_figure_examples`, `cluster_alpha`,
  `cluster_no_neighbour`; `config.data.num_instance_ids` for instance tasks.
  """

  def __init__(self, config, model):
    self.config = config
    self.model = model
    self.task = config.data.name
    if self.task not in LESION_TASKS + INSTANCE_TASKS:
      raise ValueError(f'No evaluation is defined for data set {self.task!r}.')
    self._sample = jax.jit(model.sample, static_argnums=3)
    self._reconstruct = jax.jit(model.reconstruct)

  def _labels(self, logits) -> np.ndarray:
    return np.asarray(jnp.argmax(logits, axis=-1))

  def run(self, params, split: str, num_samples: int = None,
          rng_seed: int = 0) -> EvalResult:
    """Evaluates `params` on `split`; `num_samples` overrides the config."""
    eval_config = self.config.eval
    num_samples = num_samples or eval_config.num_samples
    examples = pipeline.eval_examples(self.config.data, split,
                                      limit=eval_config.num_examples)
    per_image, oracle, figures = {}, {}, []
    key = jax.random.PRNGKey(rng_seed)
    np_rng = np.random.default_rng(rng_seed)
    for batch in _batches(examples, eval_config.batch_size):
      key, sample_key = jax.random.split(key)
      images = jnp.asarray(np.stack([e['image'] for e in batch]))
      samples = self._labels(self._sample(params, sample_key, images,
                                          num_samples))  # [N, B, H, W]
      score = (self._score_lesions if self.task in LESION_TASKS
               else self._score_instances)
      for i, example in enumerate(batch):
        values, oracle_values, arrays = score(params, example, samples[:, i],
                                              np_rng)
        for name, value in values.items():
          per_image.setdefault(name, []).append(value)
        for name, value in oracle_values.items():
          oracle.setdefault(name, []).append(value)
        if len(figures) < eval_config.num_figure_examples:
          figures.append(arrays)
    if not per_image:
      raise ValueError(f'Split {split!r} of {self.task} has no examples.')
    seed = rng_seed
    summary = _summarise(per_image, eval_config.num_resamples, seed)
    summary['num_images'] = len(next(iter(per_image.values())))
    summary['num_samples'] = num_samples
    if oracle:
      summary['oracle'] = _summarise(oracle, eval_config.num_resamples, seed)
    return EvalResult(summary, {k: np.asarray(v, np.float64)
                                for k, v in per_image.items()}, figures)

  def _score_lesions(self, params, example, samples, np_rng):
    """Per-image lesion metrics; `samples` int `[N, H, W]`."""
    graders = example['graders'] > 0  # [G, H, W]
    recon = self._labels(self._reconstruct(
        params, jnp.repeat(example['image'][None], len(graders), axis=0),
        jnp.asarray(graders, jnp.int32))) == 1
    fg = samples == 1
    few = fg[:min(16, len(fg))]
    values = {
        'iou_rec': float(np.mean([metrics.iou(r, g)
                                  for r, g in zip(recon, graders)])),
        'ged_16': metrics.generalized_energy_distance(few, graders),
        f'ged_{len(fg)}': metrics.generalized_energy_distance(fg, graders),
        'hm_iou': metrics.hungarian_matched_iou(few, graders),
    }
    if example.get('subset_b', False):
      values['hm_iou_subset_b'] = values['hm_iou']
    oracle_values = {}
    if 'modes' in example:
      modes = example['modes'] > 0
      probs = np.asarray(example['mode_probs'], np.float64)
      values['exact_ged'] = metrics.weighted_generalized_energy_distance(
          fg, None, modes, probs)
      values['exact_hm_iou'] = metrics.weighted_hungarian_matched_iou(
          few, modes, probs)
      draws = modes[np_rng.choice(len(probs), size=len(fg), p=probs)]
      oracle_few = draws[:len(few)]
      oracle_values = {
          'ged_16': metrics.generalized_energy_distance(oracle_few, graders),
          f'ged_{len(fg)}': metrics.generalized_energy_distance(draws,
                                                                graders),
          'hm_iou': metrics.hungarian_matched_iou(oracle_few, graders),
          'exact_ged': metrics.weighted_generalized_energy_distance(
              draws, None, modes, probs),
          'exact_hm_iou': metrics.weighted_hungarian_matched_iou(
              oracle_few, modes, probs),
      }
    arrays = dict(image=example['image'], graders=graders, recon=recon,
                  samples=fg[:16])
    return values, oracle_values, arrays

  def _score_instances(self, params, example, samples, np_rng):
    """Per-image instance metrics; `samples` int `[N, H, W]`."""
    num_ids = self.config.data.num_instance_ids
    instances = np.asarray(example['instances'])
    mask = np.asarray(example.get('mask', np.ones(instances.shape)))
    target = _remap_ids(instances, num_ids, np_rng)
    recon = self._labels(self._reconstruct(
        params, jnp.asarray(example['image'][None]),
        jnp.asarray(target[None])))[0]
    stochastic = range(1, num_ids + 1)
    eval_config = self.config.eval
    few = samples[:min(16, len(samples))]
    clusters = clustering.cluster_instances(
        few, num_classes=num_ids + 1, alpha=eval_config.cluster_alpha,
        no_neighbour=eval_config.cluster_no_neighbour, rng=np_rng)
    values = {
        'iou_rec': metrics.multiclass_iou(recon, target, stochastic, mask),
        'rand_error': metrics.rand_error(np.where(mask > 0, clusters, 0),
                                         instances),
    }
    arrays = dict(image=example['image'], target=target, recon=recon,
                  clusters=clusters, samples=few, instances=instances)
    return values, {}, arrays


def format_table(summary: Dict[str, Any]) -> str:
  """A readable table: one row for the model, one for the oracle."""
  names = [k for k in summary if not k.endswith('_std')
           and isinstance(summary[k], float)]
  rows = [('model', summary)]
  if 'oracle' in summary:
    rows.append(('oracle', summary['oracle']))
  header = f"{'':8s}" + ''.join(f'{n:>18s}' for n in names)
  lines = [header]
  for label, values in rows:
    cells = []
    for n in names:
      if n in values and not math.isnan(values[n]):
        cells.append(f"{values[n]:9.4f} ±{values.get(n + '_std', 0):7.4f}")
      else:
        cells.append('-')
    lines.append(f'{label:8s}' + ''.join(f'{c:>18s}' for c in cells))
  return '\n'.join(lines)


def evaluate(config, params, model, split: str, num_samples: int,
             workdir: str = None) -> Dict[str, Any]:
  """Runs the evaluator, prints the table and, with a `workdir`, writes
  `<workdir>/eval/<split>/metrics.json` and the figures next to it.

  Returns:
    The summary dict (the content of metrics.json).
  """
  result = Evaluator(config, model).run(params, split, num_samples,
                                        rng_seed=config.seed)
  print(f'{config.data.name}:{split}, {result.metrics["num_images"]} images, '
        f'{num_samples} samples per image (mean ± bootstrap std):')
  print(format_table(result.metrics))
  if workdir:
    out_dir = os.path.join(workdir, 'eval', split)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'metrics.json'), 'w') as f:
      json.dump(result.metrics, f, indent=2, sort_keys=True)
    from eval import figures  # pylint: disable=g-import-not-at-top
    paths = figures.write_figures(out_dir, config, params, model, result,
                                  workdir)
    print(f'Wrote {out_dir}/metrics.json and {len(paths)} figures.')
  return result.metrics
