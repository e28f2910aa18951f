"""Per-image scores of each task (paper Appx. B), used by `eval.evaluator`.

Each `score_*` function takes one evaluation example (see
`datasets.pipeline.eval_examples`), the model's sample labels for it and a
`reconstruct(image [B,H,W,C], segmentation [B,H,W]) -> labels [B,H,W]`
callable, and returns `(values, oracle_values, arrays)`: per-image metric
values, the same metrics for samples of the true distribution where it is
known, and arrays for the figures.
"""
from typing import Any, Callable, Dict, NamedTuple, Tuple

import numpy as np

from datasets import preprocess
from eval import clustering
from eval import field_metrics
from eval import instance_metrics
from eval import lesion_styles
from eval import metrics

Scores = Tuple[Dict[str, float], Dict[str, float], Dict[str, np.ndarray]]

# The paper's HM-IoU and the GED "at 16 samples" use this many samples.
FEW_SAMPLES = 16
HM_IOU_CONVENTIONS = ('lcm', 'repeat_gt')
# 'sample_fraction': this code's per-image ECE of the samples' foreground
# fraction; 'mose', 'ssn': those papers' ECEs of the mean softmax
# (eval.field_metrics).
ECE_CONVENTIONS = ('sample_fraction', 'mose', 'ssn')
# Per-image statistics the evaluator sums over the images before scoring
# them (its bootstrap std: `bootstrap.pooled_statistic_std`):
# name -> (summary name, score of the sum).
POOLED_STATISTICS = {'ece_bins': ('ece', field_metrics.ece_from_bins)}


class LesionProtocol(NamedTuple):
  """How the lesion tasks' distribution metrics are computed.

  The defaults are the HPU-Net paper's (docs/lidc_protocols.md gives the
  other papers' and their flags).

  Attributes:
    few_samples: GED^2 "at few", the diversity at few and the HM-IoU use the
      first this many samples (the rest: all samples).
    hm_iou_convention: 'lcm' (both sets duplicated to their least common
      multiple, the HPU-Net paper) or 'repeat_gt' (the ground truths
      repeated N / M times, MoSE and CAR; needs M | N, and then equal).
    ged_self_pairs: whether GED^2's and the diversity's within-set means
      include the i == j pairs (True: as every published code does).
    ece_convention: 'sample_fraction' (per image, the fraction of samples
      marking a pixel against the graders' mean), 'mose' (the mean
      foreground softmax, bins (lo, hi], pooled over all images) or 'ssn'
      (per image, the mean of the background's and foreground's ECE of the
      mean softmax); see `eval.field_metrics`.
  """
  few_samples: int = FEW_SAMPLES
  hm_iou_convention: str = 'lcm'
  ged_self_pairs: bool = True
  ece_convention: str = 'sample_fraction'

  def check(self) -> 'LesionProtocol':
    if self.hm_iou_convention not in HM_IOU_CONVENTIONS:
      raise ValueError(f'hm_iou_convention must be one of '
                       f'{HM_IOU_CONVENTIONS}, got {self.hm_iou_convention!r}')
    if self.ece_convention not in ECE_CONVENTIONS:
      raise ValueError(f'ece_convention must be one of {ECE_CONVENTIONS}, '
                       f'got {self.ece_convention!r}')
    if self.few_samples < 1:
      raise ValueError(f'few_samples must be >= 1, got {self.few_samples}')
    return self


PAPER_PROTOCOL = LesionProtocol()


def _hm_iou(samples, graders, convention: str) -> float:
  if convention == 'repeat_gt':
    return field_metrics.hungarian_matched_iou_repeat_gt(samples, graders)
  return metrics.hungarian_matched_iou(samples, graders)


def distribution_scores(samples: np.ndarray, graders: np.ndarray,
                         protocol: LesionProtocol, modes=None,
                         mode_probs=None) -> Dict[str, float]:
  """GED^2 and diversity at few and at all samples, HM-IoU at few, and
  against known modes.

  Args:
    samples: bool `[N, H, W]` foreground of the model's (or oracle's) samples.
    graders: bool `[G, H, W]`.
    protocol: see `LesionProtocol`.
    modes: optional bool `[M, H, W]` of the exact distribution.
    mode_probs: float `[M]`.
  """
  few = samples[:protocol.few_samples]
  self_pairs = protocol.ged_self_pairs
  values = {}
  for subset in (few, samples):
    values[f'ged_{len(subset)}'] = metrics.generalized_energy_distance(
        subset, graders, include_self_pairs=self_pairs)
    if len(subset) > 1 or self_pairs:
      values[f'diversity_{len(subset)}'] = field_metrics.sample_diversity(
          subset, include_self_pairs=self_pairs)
  values['hm_iou'] = _hm_iou(few, graders, protocol.hm_iou_convention)
  if modes is not None:
    values['exact_ged'] = metrics.weighted_generalized_energy_distance(
        samples, None, modes, mode_probs)
    values['exact_hm_iou'] = metrics.weighted_hungarian_matched_iou(
        few, modes, mode_probs)
  return values


def lesion_ece(samples: np.ndarray, graders: np.ndarray,
               sample_probs: np.ndarray, convention: str) -> Dict[str, Any]:
  """The ECE of one image under `convention` (`LesionProtocol`):
  `{'ece': value}`, or for 'mose' `{'ece_bins': float [3, B + 1]}`, the
  image's share of the pooled ECE (`field_metrics.calibration_bins`).

  Args:
    samples: bool `[N, H, W]` foreground of the samples.
    graders: bool `[G, H, W]`.
    sample_probs: float `[N, H, W, 2]`, each sample's softmax (needed by
      'mose' and 'ssn'; None otherwise).
    convention: one of `ECE_CONVENTIONS`.
  """
  if convention == 'sample_fraction':
    return {'ece': field_metrics.pixel_ece(samples.mean(axis=0),
                                           graders.mean(axis=0))}
  if sample_probs is None:
    raise ValueError(f'ece_convention {convention!r} needs the samples\' '
                     'softmax (sample_probs).')
  mean_probs = np.mean(np.asarray(sample_probs, np.float64), axis=0)
  if convention == 'ssn':
    return {'ece': field_metrics.class_wise_ece(mean_probs, graders)}
  return {'ece_bins': field_metrics.calibration_bins(
      mean_probs[..., 1], graders.mean(axis=0), closed='right')}


def score_lesions(example: dict, sample_labels: np.ndarray,
                  reconstruct: Callable, rng: np.random.Generator,
                  protocol: LesionProtocol = PAPER_PROTOCOL,
                  sample_probs: np.ndarray = None) -> Scores:
  """Binary lesion tasks (synthetic lesions, LIDC); foreground = class 1.

  `iou_rec` averages the posterior-mean reconstruction IoU over all graders
  (paper Appx. C); both-empty counts as IoU 1 (Appx. B.2). Also the other
  papers' metrics (`eval.field_metrics`): `diversity_<n>`, the ECE of all
  samples under `protocol.ece_convention` (`lesion_ece`: `ece`, or MoSE's
  pooled `ece_bins`) and, given `sample_probs` (float `[N, H, W, 2]`, each
  sample's softmax over both classes), PHiSeg's `ncc` over all samples.
  Synthetic-lesions examples (with `lesion_params`) add
  `lesion_styles.hierarchy_scores` of all samples: `style_coherence`,
  `style_tv`, `presence_bias`.
  """
  graders = np.asarray(example['graders']) > 0  # [G, H, W]
  images = np.repeat(example['image'][None], len(graders), axis=0)
  recon = reconstruct(images, graders.astype(np.int32)) == 1
  samples = sample_labels == 1
  values = {'iou_rec': float(np.mean([metrics.iou(r, g)
                                      for r, g in zip(recon, graders)]))}
  modes = probs = None
  if 'modes' in example:
    modes = np.asarray(example['modes']) > 0
    probs = np.asarray(example['mode_probs'], np.float64)
  values.update(distribution_scores(samples, graders, protocol, modes, probs))
  values.update(lesion_ece(samples, graders, sample_probs,
                           protocol.ece_convention))
  if sample_probs is not None:
    values['ncc'] = field_metrics.variance_ncc(sample_probs,
                                               graders.astype(np.int64))
  lesion_params = example.get('lesion_params')
  if lesion_params is not None:
    values.update(lesion_styles.hierarchy_scores(samples, lesion_params))
  few_key = f'ged_{min(protocol.few_samples, len(samples))}'
  if example.get('subset_b', False):
    values['hm_iou_subset_b'] = values['hm_iou']
    values[f'{few_key}_subset_b'] = values[few_key]
  oracle_values = {}
  if modes is not None:
    oracle = modes[rng.choice(len(probs), size=len(samples), p=probs)]
    oracle_values = distribution_scores(oracle, graders, protocol, modes,
                                         probs)
    if lesion_params is not None:
      oracle_values.update(lesion_styles.hierarchy_scores(oracle,
                                                          lesion_params))
  arrays = dict(image=example['image'], graders=graders, recon=recon,
                samples=samples[:FEW_SAMPLES])
  return values, oracle_values, arrays


def score_instances(example: dict, sample_labels: np.ndarray,
                    reconstruct: Callable, rng: np.random.Generator, *,
                    num_instance_ids: int, cluster_alpha: int,
                    cluster_no_neighbour: str) -> Scores:
  """Instance tasks (synthetic cells, SNEMI3D).

  The reconstruction target is a fresh random mapping of the instance ids to
  `1..num_instance_ids`, as in training; `iou_rec` nan-averages the IoU over
  the stochastic classes. The instance prediction clusters 16 samples
  (Algorithm 1 + Appx. H) and is scored with the adapted Rand error.
  """
  instances = np.asarray(example['instances'])
  target = preprocess.relabel_instances(instances, num_instance_ids, rng)
  recon = reconstruct(example['image'][None], target[None])[0]
  few = sample_labels[:FEW_SAMPLES]
  clusters = clustering.cluster_instances(
      few, num_classes=num_instance_ids + 1, alpha=cluster_alpha,
      no_neighbour=cluster_no_neighbour, rng=rng)
  values = {
      'iou_rec': instance_metrics.multiclass_iou(
          recon, target, range(1, num_instance_ids + 1)),
      'rand_error': instance_metrics.rand_error(clusters, instances),
  }
  arrays = dict(image=example['image'], target=target, recon=recon,
                clusters=clusters, samples=few, instances=instances)
  return values, {}, arrays


def extrapolation_target(example: dict, rng: np.random.Generator, *,
                         num_instance_ids: int) -> np.ndarray:
  """The segmentation of the extrapolation task: int32 `[H, W]`, a fresh
  random mapping of the instance ids to `1..num_instance_ids` (as in
  training). Its visible part is fed to the prior; all of it is the target."""
  return preprocess.relabel_instances(np.asarray(example['instances']),
                                      num_instance_ids, rng)


def label_disagreement(samples: np.ndarray) -> np.ndarray:
  """Sample diversity per pixel, int `[N, H, W]` -> float `[H, W]`.

  The fraction of ordered pairs of distinct samples that give the pixel
  different labels: 0 where all samples agree, `1 - 1/K` at most in
  expectation for K equally likely labels. Needs N >= 2.
  """
  samples = np.asarray(samples)
  if samples.ndim != 3 or len(samples) < 2:
    raise ValueError('label_disagreement needs >= 2 samples [N, H, W], got '
                     f'shape {samples.shape}')
  num = len(samples)
  _, inverse = np.unique(samples, return_inverse=True)
  inverse = inverse.reshape(samples.shape)
  counts = np.stack([np.count_nonzero(inverse == label, axis=0)
                     for label in range(int(inverse.max()) + 1)])
  agreeing_pairs = np.sum(counts * (counts - 1), axis=0)
  return 1.0 - agreeing_pairs / (num * (num - 1))


def _region_mean(values: np.ndarray, region: np.ndarray) -> float:
  return float(np.mean(values[region])) if np.any(region) else float('nan')


def score_extrapolation(example: dict, sample_labels: np.ndarray,
                        reconstruct: Callable, rng: np.random.Generator, *,
                        num_instance_ids: int, cluster_alpha: int,
                        cluster_no_neighbour: str) -> Scores:
  """Extrapolation on masked images (paper Sec. 3.3), instance tasks.

  Scores inside (`_masked`) and outside (`_visible`) the hidden region:
  `iou_rec` (posterior-mean reconstruction of the whole target, IoU
  nan-averaged over the stochastic classes within the region),
  `diversity` (mean `label_disagreement` of the samples) and, outside only,
  `rand_error_visible`: the adapted Rand error of the Hamming clustering of
  16 samples against the visible instances. Also `iou_rec` over the whole
  image and `masked_fraction`.

  Args:
    example: eval example with `image`, `instances`, `mask`, and from the
      evaluator's masking `target` int `[H, W]` (`extrapolation_target`),
      `visible` `[H, W]` (1 = visible) and `model_input` `[H, W, C + K + 1]`.
    sample_labels: int `[N, H, W]`, samples from `model_input`.
    reconstruct: see the module docstring.
    rng: numpy generator (clustering).
    num_instance_ids: labels of the instances; K = num_instance_ids + 1.
    cluster_alpha: Hamming threshold.
    cluster_no_neighbour: Appx. H rule.
  """
  target = np.asarray(example['target'])
  valid = np.asarray(example['mask']) > 0
  visible = (np.asarray(example['visible']) > 0) & valid
  hidden = ~visible & valid
  instances = np.asarray(example['instances'])
  model_input = np.asarray(example['model_input'])
  recon = reconstruct(model_input[None], target[None])[0]
  classes = range(1, num_instance_ids + 1)
  disagreement = label_disagreement(sample_labels)
  few = sample_labels[:FEW_SAMPLES]
  clusters = clustering.cluster_instances(
      few, num_classes=num_instance_ids + 1, alpha=cluster_alpha,
      no_neighbour=cluster_no_neighbour, rng=rng)
  values = {
      'iou_rec': instance_metrics.multiclass_iou(recon, target, classes,
                                                 valid),
      'iou_rec_visible': instance_metrics.multiclass_iou(recon, target,
                                                         classes, visible),
      'iou_rec_masked': instance_metrics.multiclass_iou(recon, target,
                                                        classes, hidden),
      'diversity_visible': _region_mean(disagreement, visible),
      'diversity_masked': _region_mean(disagreement, hidden),
      # Instances outside the visible part are ignored (gt id 0).
      'rand_error_visible': instance_metrics.rand_error(
          clusters, np.where(visible, instances, 0)),
      'masked_fraction': float(np.count_nonzero(hidden) /
                               max(np.count_nonzero(valid), 1)),
  }
  num_image_channels = model_input.shape[-1] - (num_instance_ids + 2)
  arrays = dict(image=example['image'],
                masked_image=model_input[..., :num_image_channels],
                model_input=model_input, visible=visible, target=target,
                recon=recon, clusters=clusters, samples=few,
                instances=instances, diversity=disagreement)
  return values, {}, arrays


def car_classes(num_car_ids: int) -> Tuple[int, ...]:
  """Cityscapes car classes: train id 13, then 19, 20, ... (see preprocess)."""
  return (preprocess.CITYSCAPES_CAR_TRAIN_ID,) + tuple(
      preprocess.CITYSCAPES_NUM_TRAIN_IDS + i for i in range(num_car_ids - 1))


def score_cityscapes(example: dict, sample_labels: np.ndarray,
                     car_probability: np.ndarray, reconstruct: Callable,
                     rng: np.random.Generator, *, num_car_ids: int,
                     cluster_alpha: int, cluster_no_neighbour: str,
                     ap) -> Scores:
  """Cityscapes cars: IoU_rec over the car classes, Rand error of the car
  clustering (Appx. G with background for no neighbour), and the official
  AP through `ap` (a `cityscapes_eval.CityscapesAP`).

  Args:
    example: eval example with `train_ids`, `instances` (cars), `mask`,
      `key`, `city`.
    sample_labels: int `[N, H, W]`.
    car_probability: `[H, W]`, the car classes' softmax summed, averaged
      over the samples (the object score of Appx. B.3 averages it over an
      instance's pixels).
    reconstruct: see the module docstring.
    rng: numpy generator.
    num_car_ids: number of car classes.
    cluster_alpha: Hamming threshold (32 for 32 samples).
    cluster_no_neighbour: Appx. H rule ('background' on Cityscapes).
    ap: collects predictions for the official AP evaluation.
  """
  from eval import cityscapes_eval  # pylint: disable=g-import-not-at-top
  cars = car_classes(num_car_ids)
  mask = np.asarray(example['mask'])
  target, _ = preprocess.cityscapes_segmentation(
      example['train_ids'], example['instances'], num_car_ids, rng)
  recon = reconstruct(example['image'][None], target[None])[0]
  # Clustering sees car id 1..num_car_ids and 0 for everything else.
  car_index = np.zeros(int(sample_labels.max()) + 1 if sample_labels.size
                       else 1, np.int32)
  for i, c in enumerate(cars):
    if c < len(car_index):
      car_index[c] = i + 1
  car_samples = car_index[sample_labels]
  clusters = clustering.cluster_instances(
      car_samples, num_classes=num_car_ids + 1, alpha=cluster_alpha,
      no_neighbour=cluster_no_neighbour, rng=rng)
  num_classes = preprocess.CITYSCAPES_NUM_TRAIN_IDS + num_car_ids - 1
  predictions = cityscapes_eval.car_predictions_from_votes(
      clusters, sample_labels, car_probability, cars, num_classes)
  ap.add_predictions(example['key'], example['city'], example['train_ids'],
                     example['instances'], predictions)
  valid = mask > 0
  values = {
      'iou_rec': instance_metrics.multiclass_iou(recon, target, cars, mask),
      'rand_error': instance_metrics.rand_error(
          np.where(valid, clusters, 0),
          np.where(valid, example['instances'], 0)),
  }
  arrays = dict(image=example['image'], target=target, recon=recon,
                clusters=clusters, samples=sample_labels[:FEW_SAMPLES],
                instances=example['instances'])
  return values, {}, arrays
