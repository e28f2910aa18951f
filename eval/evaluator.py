"""The evaluator shared by the trainer's final summary and `eval.run_metrics`.

For every test image it draws samples with encoder-once sampling (the
decoder path is `vmap`ped over chunks of sample keys and reduced to labels on
the device), reconstructs the ground truths from the posterior means, and
scores them with `eval.task_scores` (paper Appx. B). Per-image values are
summarised with the bootstrap of `eval.bootstrap` (mean and the std of 1000
resampled means).

Tasks (from `config.data.name`):
- lesions (`synthetic_lesions`, `lidc_crops`, `lidc_v1`): `iou_rec` over all
  graders, `ged_16`, `ged_<N>` (GED^2 with self pairs, as the usual code),
  `hm_iou` (16 samples), `hm_iou_subset_b` (LIDC), and the other papers'
  `diversity_16`, `diversity_<N>`, `ncc`, `ece` (`eval.field_metrics`; a
  pooled ECE, MoSE's, is scored on per-image bin statistics summed over the
  images, kept per image as `ece_bins`),
  under the protocol of `config.eval` (`task_scores.LesionProtocol`, written
  into the summary as `protocol`); with the exact
  distribution (synthetic): `exact_ged` (N samples), `exact_hm_iou` (16
  samples), the answer's hierarchy (`style_coherence`, `style_tv`,
  `presence_bias`, `eval.lesion_styles`) and an `oracle` row of samples
  drawn from the true distribution.
- instances (`synthetic_cells`, `snemi3d`): `iou_rec`, `rand_error` of the
  Hamming clustering of 16 samples.
- `cityscapes_cars`: `iou_rec` (car classes), `rand_error`, `ap`, `ap50`.

With `config.masking` set (the extrapolation task, paper Sec. 3.3; instance
tasks only) every image is masked as in training, with a fixed key per image
index, its visible labels fed to the prior, and scored by
`task_scores.score_extrapolation`: `iou_rec` and sample `diversity` inside
(`_masked`) and outside (`_visible`) the hidden region, and
`rand_error_visible`.

The loop reports images done of the total, images and samples per second and
the ETA (`hpunet_jax.runtime.progress`; the first, compiling batch apart).
`eval.evaluation.evaluate` runs it for one checkpoint, prints the table and
writes the evaluation's own folder (`eval.outputs`).
"""
import functools
import itertools
from typing import Any, Dict, Iterable, List, NamedTuple, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from datasets import masking
from datasets import pipeline
from eval import bootstrap
from eval import clustering
from eval import sample_memory
from eval import task_scores
from hpunet_jax.runtime import progress
from hpunet_jax.runtime import xla_options
from hpunet_jax import models

LESION_TASKS = ('synthetic_lesions', 'lidc_crops', 'lidc_v1')
INSTANCE_TASKS = ('synthetic_cells', 'snemi3d')
CITYSCAPES = 'cityscapes_cars'
# Samples decoded at once (bounds the memory of [chunk, B, H, W, K] logits).
SAMPLE_CHUNK = models.SAMPLE_CHUNK
# Seed of the per-image extrapolation masks: the same masks for every model
# and training seed, so runs compare.
EXTRAPOLATION_MASK_SEED = 0


def check_masking_supported(task: str) -> None:
  """Raises ValueError unless the extrapolation scores exist for `task`."""
  if task not in INSTANCE_TASKS:
    raise ValueError(f'config.masking: the extrapolation evaluation is '
                     f'defined for {INSTANCE_TASKS}, not {task!r}; set '
                     'config.eval.num_samples = 0 to train without it.')


def clustering_threshold(task: str, cluster_alpha: int,
                         num_samples: int) -> Optional[int]:
  """The Hamming threshold the instance clustering of `task` uses with
  `num_samples` samples per image (None for the lesion tasks): instance
  tasks cluster the first `task_scores.FEW_SAMPLES`, Cityscapes all, and
  `clustering.threshold_for_samples` lowers `cluster_alpha` to that count."""
  if task in LESION_TASKS:
    return None
  clustered = (num_samples if task == CITYSCAPES
               else min(num_samples, task_scores.FEW_SAMPLES))
  return clustering.threshold_for_samples(cluster_alpha, clustered)


class EvalSettingsError(ValueError):
  """An evaluation setting is out of range (raised before any sampling)."""


def check_counts(num_samples: int, num_examples: Optional[int]) -> None:
  """Samples per image >= 1; images None (the whole split) or >= 1."""
  if isinstance(num_samples, bool) or int(num_samples) != num_samples or (
      num_samples < 1):
    raise EvalSettingsError(f'num_samples must be a positive integer, got '
                            f'{num_samples!r}.')
  if num_examples is not None and (int(num_examples) != num_examples
                                   or num_examples < 1):
    raise EvalSettingsError(
        f'config.eval.num_examples must be None (the whole split) or a '
        f'positive integer, got {num_examples!r}.')


class EvalResult(NamedTuple):
  """Summary metrics and the first few images' arrays (for figures).

  Attributes:
    metrics: flat dict, `<name>` and `<name>_std`; `oracle` where known.
    per_image: dict name -> float64 `[num_images]` (`[num_images, ...]`
      for a pooled metric's statistics, `task_scores.POOLED_STATISTICS`).
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
    if name in task_scores.POOLED_STATISTICS:  # Summed, then scored.
      out_name, score = task_scores.POOLED_STATISTICS[name]
      out[out_name] = score(values.sum(axis=0))
      out[out_name + '_std'] = bootstrap.pooled_statistic_std(
          values, score, num_resamples, rng=seed)
      continue
    values = values[np.isfinite(values)]
    if values.size == 0:
      continue
    mean, std = bootstrap.bootstrap_mean_std(values, num_resamples, rng=seed)
    out[name], out[name + '_std'] = float(mean), float(std)
  return out


def sample_labels(model, params, rng, images, num_samples: int,
                  foreground_classes=(), per_sample_probabilities=False):
  """Encoder-once sampling (`model.sample`) reduced on the device.

  Args:
    model: `models.Model`.
    params: its parameters.
    rng: PRNG key; the samples are `model.sample(params, rng, ...)`'s.
    images: `[B, H, W, C]`.
    num_samples: N (static).
    foreground_classes: classes whose softmax is summed (static tuple).
    per_sample_probabilities: return every sample's softmax over all
      classes, `[N, B, H, W, K]`, instead (static); each class's own
      float32 softmax keeps a background probability that `1 - foreground`
      would round to 0.

  Returns:
    labels int32 `[N, B, H, W]` and the mean over samples of the summed
    foreground softmax, `[B, H, W]` (or the probabilities, see above).
  """

  def labels_and_probabilities(logits):
    probs = jax.nn.softmax(logits, axis=-1)
    if not per_sample_probabilities:
      probs = jnp.sum(probs[..., list(foreground_classes)], axis=-1)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32), probs

  labels, probs = model.sample(params, rng, images, num_samples,
                               per_sample=labels_and_probabilities)
  if per_sample_probabilities:
    return labels, probs
  return labels, jnp.mean(probs, axis=0)


def lesion_protocol(eval_config) -> task_scores.LesionProtocol:
  """`config.eval`'s protocol fields; configs saved before they existed
  get the HPU-Net paper's conventions (what they were evaluated with)."""
  paper = task_scores.PAPER_PROTOCOL
  return task_scores.LesionProtocol(
      few_samples=eval_config.get('few_samples', paper.few_samples),
      hm_iou_convention=eval_config.get('hm_iou_convention',
                                        paper.hm_iou_convention),
      ged_self_pairs=eval_config.get('ged_self_pairs',
                                     paper.ged_self_pairs),
      ece_convention=eval_config.get('ece_convention',
                                     paper.ece_convention)).check()


class Evaluator:
  """Samples and scores a model on one split of `config.data`.

  Config keys read (`config.eval`): `batch_size`, `num_samples` (largest
  sample count), `num_resamples` (bootstrap), `num_examples` (None = the
  whole split), `num_figure_examples`, `cluster_alpha` (lowered to the
  number of clustered samples, `clustering_threshold`),
  `cluster_no_neighbour`, and for lesions `few_samples`,
  `hm_iou_convention`, `ged_self_pairs`, `ece_convention` (see
  `lesion_protocol`); and `config.data.num_instance_ids` /
  `config.data.num_car_ids` for the instance tasks.
  """

  def __init__(self, config, model):
    self.config = config
    self.model = model
    self.task = config.data.name
    if self.task not in LESION_TASKS + INSTANCE_TASKS + (CITYSCAPES,):
      raise ValueError(f'No evaluation is defined for data set {self.task!r}.')
    foreground = ()
    if self.task == CITYSCAPES:
      foreground = task_scores.car_classes(config.data.num_car_ids)
    # Lesions: each sample's softmax, for PHiSeg's NCC and the ECEs.
    per_sample = self.task in LESION_TASKS
    self.protocol = lesion_protocol(config.eval)
    # Configs saved before the option existed lack it: compile as they did.
    jit_kwargs = xla_options.jit_kwargs(config.get('xla_cpu_eigen_conv',
                                                   False))
    self._sample = jax.jit(functools.partial(
        sample_labels, model, foreground_classes=foreground,
        per_sample_probabilities=per_sample),
                           static_argnums=3, **jit_kwargs)
    self._mask = None
    if config.get('masking', None):
      check_masking_supported(self.task)
      self._mask = jax.jit(jax.vmap(functools.partial(
          masking.mask_example, **dict(config.masking))))
    reconstruct = jax.jit(model.reconstruct, **jit_kwargs)
    self._reconstruct_labels = lambda params: lambda image, seg: np.asarray(
        jnp.argmax(reconstruct(params, jnp.asarray(image), jnp.asarray(seg)),
                   axis=-1))

  def _masked(self, batch: List[dict], first_index: int,
              np_rng: np.random.Generator) -> List[dict]:
    """Adds `target`, `visible` and `model_input` (`[H, W, C + K + 1]`)
    to each example; image `first_index + i` always gets the same mask."""
    targets = np.stack([task_scores.extrapolation_target(
        e, np_rng, num_instance_ids=self.config.data.num_instance_ids)
                        for e in batch])
    base_key = jax.random.PRNGKey(EXTRAPOLATION_MASK_SEED)
    keys = jnp.stack([jax.random.fold_in(base_key, first_index + i)
                      for i in range(len(batch))])
    masked = jax.device_get(self._mask(keys, {
        'image': np.stack([e['image'] for e in batch]),
        'segmentation': targets,
        'mask': np.stack([e['mask'] for e in batch])}))
    return [dict(e, target=targets[i], visible=masked['visible'][i],
                 model_input=masked['image'][i]) for i, e in enumerate(batch)]

  def check_memory(self, params, split: str,
                   num_samples: Optional[int] = None) -> None:
    """Raises `sample_memory.SampleMemoryError` (naming the largest count
    that fits) unless `num_samples` samples of a batch of `split` fit in
    memory; traces the sampler, runs nothing. `run` checks this too; the
    trainer calls it before training, so a count that cannot fit is refused
    before hours of training, not after."""
    num_samples = num_samples or self.config.eval.num_samples
    first, _, num_images = self._open_split(split)
    self._check_memory(params, np.shape(first['image'])[:2], num_images,
                       num_samples)

  def _open_split(self, split: str):
    """`(first example, iterator over all of them, count)` of `split`, at
    most `eval.num_examples`; EvalSettingsError when it has none."""
    limit = self.config.eval.num_examples
    examples = pipeline.eval_examples(self.config.data, split, limit=limit)
    first = next(examples, None)
    if first is None:
      raise EvalSettingsError(f'Split {split!r} of {self.task} has no '
                              'examples.')
    return (first, itertools.chain([first], examples),
            pipeline.num_eval_examples(self.config.data, split, limit=limit))

  def _check_memory(self, params, image_hw, num_images: int,
                    num_samples: int) -> None:
    batch_size = min(self.config.eval.batch_size, num_images)
    batch = jax.ShapeDtypeStruct(  # With masking: + visible labels.
        (batch_size,) + tuple(image_hw)
        + (self.config.model.num_input_channels,), jnp.float32)
    sample_memory.budget(
        sample_memory.sampled_bytes_per_sample(
            self._sample, params, jax.random.PRNGKey(0), batch),
        batch_size, image_hw, self.task in LESION_TASKS).check(num_samples)

  def run(self, params, split: str, num_samples: int = None,
          rng_seed: int = 0) -> EvalResult:
    """Evaluates `params` on `split`; `num_samples` overrides the config."""
    eval_config = self.config.eval
    num_samples = num_samples or eval_config.num_samples
    check_counts(num_samples, eval_config.num_examples)
    alpha = clustering_threshold(self.task, eval_config.cluster_alpha,
                                 num_samples)
    if alpha is not None and alpha != eval_config.cluster_alpha:
      logging.info('Clustering %d samples: Hamming threshold %d (the '
                   'number of clustered samples) instead of '
                   'config.eval.cluster_alpha = %d.', alpha, alpha,
                   eval_config.cluster_alpha)
    first, examples, num_images = self._open_split(split)
    # Before compiling or sampling: N samples of a batch must fit.
    self._check_memory(params, np.shape(first['image'])[:2], num_images,
                       num_samples)
    # The first batch compiles the sampler: left out of the rate and ETA.
    report = progress.Progress(
        f'evaluating {self.task}:{split}', total=num_images, unit='images',
        per_item={'samples': num_samples},
        warmup_items=min(eval_config.batch_size, num_images),
        warmup_label='compiling the sampler, first batch')
    reconstruct = self._reconstruct_labels(params)
    ap = None
    if self.task == CITYSCAPES:
      from eval import cityscapes_eval  # pylint: disable=g-import-not-at-top
      ap = cityscapes_eval.CityscapesAP(
          task_scores.car_classes(self.config.data.num_car_ids),
          min_region_size=eval_config.ap_min_region_size)
    per_image, oracle, figures = {}, {}, []
    key = jax.random.PRNGKey(rng_seed)
    np_rng = np.random.default_rng(rng_seed)
    num_seen = 0
    for batch in _batches(examples, eval_config.batch_size):
      key, sample_key = jax.random.split(key)
      if self._mask is not None:
        batch = self._masked(batch, num_seen, np_rng)
      num_seen += len(batch)
      images = jnp.asarray(np.stack([e.get('model_input', e['image'])
                                     for e in batch]))
      labels, foreground = jax.device_get(
          self._sample(params, sample_key, images, num_samples))
      for i, example in enumerate(batch):
        if self._mask is not None:
          scores = task_scores.score_extrapolation(
              example, labels[:, i], reconstruct, np_rng,
              num_instance_ids=self.config.data.num_instance_ids,
              cluster_alpha=eval_config.cluster_alpha,
              cluster_no_neighbour=eval_config.cluster_no_neighbour)
        elif self.task in LESION_TASKS:
          scores = task_scores.score_lesions(
              example, labels[:, i], reconstruct, np_rng, self.protocol,
              sample_probs=foreground[:, i])
        elif self.task in INSTANCE_TASKS:
          scores = task_scores.score_instances(
              example, labels[:, i], reconstruct, np_rng,
              num_instance_ids=self.config.data.num_instance_ids,
              cluster_alpha=eval_config.cluster_alpha,
              cluster_no_neighbour=eval_config.cluster_no_neighbour)
        else:
          scores = task_scores.score_cityscapes(
              example, labels[:, i], foreground[i], reconstruct, np_rng,
              num_car_ids=self.config.data.num_car_ids,
              cluster_alpha=eval_config.cluster_alpha,
              cluster_no_neighbour=eval_config.cluster_no_neighbour, ap=ap)
        values, oracle_values, arrays = scores
        for name, value in values.items():
          per_image.setdefault(name, []).append(value)
        for name, value in oracle_values.items():
          oracle.setdefault(name, []).append(value)
        if len(figures) < eval_config.num_figure_examples:
          figures.append(arrays)
        report.update()  # Per image: scoring (e.g. clustering) is counted.
    report.close()
    summary = _summarise(per_image, eval_config.num_resamples, rng_seed)
    summary['num_images'] = len(next(iter(per_image.values())))
    summary['num_samples'] = num_samples
    if alpha is not None:
      summary['cluster_alpha'] = alpha
    if self.task in LESION_TASKS:
      summary['protocol'] = dict(
          self.protocol._asdict(), num_samples=num_samples,
          num_examples=eval_config.num_examples, split=split,
          data=self.task, builder_config=self.config.data.builder_config)
    if ap is not None:
      summary.update(ap.result())
    if oracle:
      summary['oracle'] = _summarise(oracle, eval_config.num_resamples,
                                     rng_seed)
    return EvalResult(summary, {k: np.asarray(v, np.float64)
                                for k, v in per_image.items()}, figures)
