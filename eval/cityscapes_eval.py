"""Cityscapes car-instance AP / AP50 with the official evaluator (App. B.3).

Predicted car instances (Hamming clusters, Appx. G/H) are scored by
`cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling` (AP averaged
over the overlaps 0.50:0.05:0.95, and AP50), one object score per instance:
the car classes' softmax averaged over its pixels and the samples.

Resolution: the stored one (512x1024 in the paper's config) for ground truth
and predictions alike; the official 1024x2048 instanceIds files are not kept
by the TFDS builder. The official minimum region size, 100 pixels, counts
pixels at the evaluated resolution (the same area is 25 at half resolution).

Ground truth `<gt_dir>/<city>/<key>_gtFine_instanceIds.png` (16 bit, `key` =
`<city>_<seq>_<frame>`), rebuilt from the stored `train_ids` and
`car_instances`. The evaluator reads the label id as `value // 1000` (values
>= 1000, instances) or `value` (a group, if of an instance class), and treats
pixels whose value is an `ignoreInEval` label id as void; predictions that
fall mostly on void or groups are excused. We write 26000 + k on car k, 26 on
car pixels without instance (a car group, as officially), the label id of
train ids 0..18, and 0 ('unlabeled', void) on ignore (255). Unlike the
official files, caravan / trailer instances (29xxx, 30xxx, not void there)
are void here: the stored train ids cannot tell them from other ignored
pixels. Instances of other classes become groups; only 'car' is scored.

Predictions `<pred_dir>/<city>/<key>.txt`: lines `masks/<key>_<i>.png 26
<confidence>`, masks uint8 0/255 in `<pred_dir>/<city>/masks/`.

The official evaluator is driven by `eval.cityscapes_official.evaluate_ap`
(re-exported here), which documents its work-arounds.
"""
import pathlib
import shutil
import tempfile
import weakref
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from cityscapesscripts.helpers import labels as cs_labels
from eval.cityscapes_official import (  # pylint: disable=unused-import
    CAR_LABEL_ID, GT_SUFFIX, IGNORE_TRAIN_ID, MAX_INSTANCES,
    NUM_TRAIN_IDS, OFFICIAL_MIN_REGION_SIZE,
    VOID_LABEL_ID, CityscapesEvalError, evaluate_ap)  # Re-exported.


_TRAIN_TO_LABEL = np.full(256, VOID_LABEL_ID, np.uint16)
_TRAIN_TO_LABEL[:NUM_TRAIN_IDS] = [cs_labels.trainId2label[t].id
                                   for t in range(NUM_TRAIN_IDS)]


def _check_name(value, what: str) -> str:
  """A key or city as a file-name part: no spaces, no path separators."""
  if isinstance(value, bytes):
    value = value.decode('utf-8')
  if (not isinstance(value, str) or not value or value in ('.', '..')
      or any(c.isspace() or c in '/\\' for c in value)):
    raise CityscapesEvalError(
        f'{what} must be a non-empty name without spaces or path separators '
        f'(the evaluator splits its txt lines on spaces), got {value!r}')
  return value


def car_instance_predictions(
    clusters: np.ndarray, sample_probs: np.ndarray,
    car_classes: Sequence[int]) -> List[Tuple[np.ndarray, float]]:
  """Predicted car instances of one image and their object scores.

  A cluster (id != 0; 0 is the clustering's background) is a car when, voting
  with the argmax class of each of its pixels in each sample and counting all
  `car_classes` as one class 'car', 'car' has strictly more votes than any
  other class (a tie goes against 'car'). Pooling is needed because the
  alternative car classes are one semantic class: a car drawn as class 13 in
  some samples and 19 in others is still a car. Its score is the mean, over
  its pixels and the samples, of the summed softmax of the car classes (the
  paper averages the car classes' softmax; dividing by their number would not
  change any ranking, and AP depends only on the ranking).

  Args:
    clusters: int `[H, W]`, 0 = background, other values = one cluster each.
    sample_probs: float `[N, H, W, K]` softmax probabilities of N samples.
    car_classes: the car classes in `[0, K)` (13 and 19, 20, ... in training).

  Returns:
    `(mask bool [H, W], score float)` per car cluster, in cluster-id order.
  """
  probs = np.asarray(sample_probs)
  if probs.ndim != 4 or not np.issubdtype(probs.dtype, np.floating):
    raise CityscapesEvalError(
        f'sample_probs must be float [N, H, W, K], got shape {probs.shape} '
        f'and dtype {probs.dtype}')
  is_car_class = _car_class_mask(car_classes, probs.shape[-1])
  return car_predictions_from_votes(
      clusters, np.argmax(probs, axis=-1),
      probs[..., is_car_class].sum(axis=-1).mean(axis=0), car_classes,
      probs.shape[-1])


def _car_class_mask(car_classes, num_classes: int) -> np.ndarray:
  car_classes = np.asarray(car_classes)
  if (car_classes.ndim != 1 or car_classes.size == 0
      or not np.issubdtype(car_classes.dtype, np.integer)
      or car_classes.min() < 0 or car_classes.max() >= num_classes
      or len(np.unique(car_classes)) != car_classes.size):
    raise CityscapesEvalError(
        f'car_classes must be distinct class ids in [0, {num_classes}), got '
        f'{car_classes.tolist()}')
  is_car_class = np.zeros(num_classes, bool)
  is_car_class[car_classes] = True
  return is_car_class


def car_predictions_from_votes(
    clusters: np.ndarray, sample_labels: np.ndarray,
    car_probability: np.ndarray, car_classes: Sequence[int],
    num_classes: int) -> List[Tuple[np.ndarray, float]]:
  """`car_instance_predictions` from summaries reduced on the device.

  Args: `clusters` int `[H, W]`; `sample_labels` int `[N, H, W]`, argmax of
  each sample; `car_probability` float `[H, W]`, mean over the samples of the
  car classes' summed softmax; `car_classes`; `num_classes` K.
  """
  clusters = np.asarray(clusters)
  labels = np.asarray(sample_labels)
  car_probability = np.asarray(car_probability, np.float64)
  if (clusters.ndim != 2 or not np.issubdtype(clusters.dtype, np.integer)
      or clusters.min(initial=0) < 0):
    raise CityscapesEvalError(f'clusters must be int [H, W] >= 0, got shape '
                              f'{clusters.shape}, dtype {clusters.dtype}')
  if (labels.ndim != 3 or labels.shape[1:] != clusters.shape
      or car_probability.shape != clusters.shape):
    raise CityscapesEvalError(
        f'sample labels {labels.shape} / car probability '
        f'{car_probability.shape} do not match clusters {clusters.shape} '
        '(expected [N, H, W] / [H, W])')
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise CityscapesEvalError(f'sample labels must lie in [0, {num_classes})')
  is_car_class = _car_class_mask(car_classes, num_classes)
  ids, cluster_of_pixel = np.unique(clusters, return_inverse=True)
  cluster_of_pixel = cluster_of_pixel.reshape(-1)
  # Vote classes 0..K-1, with every car class moved to the extra class K.
  votes = np.where(is_car_class[labels], num_classes, labels).reshape(
      len(labels), -1)
  counts = np.bincount(
      (cluster_of_pixel[None] * (num_classes + 1) + votes).reshape(-1),
      minlength=len(ids) * (num_classes + 1)).reshape(len(ids), -1)
  best_other = counts[:, :num_classes].max(axis=1)
  is_car = (counts[:, num_classes] > best_other) & (ids != 0)
  sizes = np.bincount(cluster_of_pixel, minlength=len(ids))
  scores = np.bincount(cluster_of_pixel, weights=car_probability.reshape(-1),
                       minlength=len(ids)) / np.maximum(sizes, 1)
  return [(clusters == ids[i], float(scores[i]))
          for i in np.flatnonzero(is_car)]


def ground_truth_instance_ids(train_ids: np.ndarray,
                              car_instances: np.ndarray) -> np.ndarray:
  """Rebuilds an official-style instanceIds map (see the module docstring).

  Args:
    train_ids: uint8 `[H, W]`, 0..18, 255 = ignore.
    car_instances: int `[H, W]`, 0 = no car, 1..n = cars (train id 13 there).

  Returns:
    uint16 `[H, W]`: 26000 + k on car k, 26 on car pixels without instance,
    the label id of the train id elsewhere, 0 (void) on ignore pixels.
  """
  train_ids = np.asarray(train_ids)
  car_instances = np.asarray(car_instances)
  if train_ids.ndim != 2 or train_ids.shape != car_instances.shape:
    raise CityscapesEvalError(
        f'train_ids {train_ids.shape} and car_instances {car_instances.shape} '
        'must both be [H, W]')
  valid = (((train_ids >= 0) & (train_ids < NUM_TRAIN_IDS))
           | (train_ids == IGNORE_TRAIN_ID))
  if not valid.all():
    raise CityscapesEvalError(f'train_ids must be 0..18 or 255, got '
                              f'{np.unique(train_ids[~valid]).tolist()}')
  if car_instances.min(initial=0) < 0 or car_instances.max(
      initial=0) > MAX_INSTANCES:
    raise CityscapesEvalError(
        f'car_instances must lie in 0..{MAX_INSTANCES}, got range '
        f'[{car_instances.min()}, {car_instances.max()}]')
  is_car = car_instances > 0
  car_train_id = cs_labels.id2label[CAR_LABEL_ID].trainId
  if np.any(is_car & (train_ids != car_train_id)):
    raise CityscapesEvalError(
        f'car_instances marks pixels whose train id is not {car_train_id} '
        f'(car): {np.unique(train_ids[is_car]).tolist()}')
  out = _TRAIN_TO_LABEL[train_ids.astype(np.int64)]
  out[is_car] = CAR_LABEL_ID * 1000 + car_instances[is_car]
  return out


def write_ground_truth(gt_dir, key, city, train_ids,
                       car_instances) -> pathlib.Path:
  """Writes `<gt_dir>/<city>/<key>_gtFine_instanceIds.png`; returns the path."""
  key, city = _check_name(key, 'key'), _check_name(city, 'city')
  instance_ids = ground_truth_instance_ids(train_ids, car_instances)
  path = pathlib.Path(gt_dir) / city / (key + GT_SUFFIX)
  if path.exists():
    raise CityscapesEvalError(f'{path}: ground truth for key {key!r} exists')
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(instance_ids).save(path)
  return path


def write_prediction(pred_dir, key, city,
                     instances: Sequence[Tuple[np.ndarray, float]]
                     ) -> pathlib.Path:
  """Writes `<pred_dir>/<city>/<key>.txt` and its masks; returns the txt path.

  `instances`: `(mask bool [H, W], score)` per predicted car; empty masks are
  left out (the evaluator skips them too). `key` as the ground truth's.
  """
  key, city = _check_name(key, 'key'), _check_name(city, 'city')
  city_dir = pathlib.Path(pred_dir) / city
  txt_path = city_dir / f'{key}.txt'
  if txt_path.exists():
    raise CityscapesEvalError(f'{txt_path}: prediction for key {key!r} exists')
  instances = [(np.asarray(mask), score) for mask, score in instances]
  for i, (mask, score) in enumerate(instances):  # Check all, then write.
    if (mask.ndim != 2 or mask.dtype != np.bool_
        or mask.shape != instances[0][0].shape):
      raise CityscapesEvalError(f'{key}: instance {i} mask must be bool '
                                f'[H, W] like the first, got {mask.shape} '
                                f'{mask.dtype}')
    if not np.isfinite(score):
      raise CityscapesEvalError(f'{key}: instance {i} score is {score}')
  (city_dir / 'masks').mkdir(parents=True, exist_ok=True)
  lines = []
  for i, (mask, score) in enumerate(instances):
    if not mask.any():
      continue
    relative = f'masks/{key}_{i:04d}.png'
    Image.fromarray(mask.astype(np.uint8) * 255).save(city_dir / relative)
    lines.append(f'{relative} {CAR_LABEL_ID} {float(score)!r}\n')
  txt_path.write_text(''.join(lines))
  return txt_path


class CityscapesAP:
  """Accumulates images in a temporary directory, then scores them.

  Usage: `add(...)` per image, then `result()`, which evaluates and deletes
  the directory (as do `close()` and garbage collection).
  """

  def __init__(self, car_classes: Sequence[int],
               min_region_size: int = OFFICIAL_MIN_REGION_SIZE,
               overlaps: Optional[Sequence[float]] = None,
               work_dir: Optional[str] = None):
    """Args: the car classes, `evaluate_ap`'s options, and where to make the
    temporary directory (None = the system's temporary directory)."""
    self.car_classes = tuple(int(c) for c in car_classes)
    self.min_region_size = min_region_size
    self.overlaps = overlaps
    self._root = pathlib.Path(tempfile.mkdtemp(prefix='cityscapes_ap_',
                                               dir=work_dir))
    self._cleanup = weakref.finalize(self, shutil.rmtree, str(self._root),
                                     ignore_errors=True)
    self.num_images = 0

  @property
  def directory(self) -> pathlib.Path:
    """The temporary directory (`gt/` and `pred/`)."""
    return self._root

  def add(self, key, city, train_ids, car_instances, clusters,
          sample_probs) -> int:
    """Adds one image; returns its number of predicted cars.

    `key` (`<city>_<seq>_<frame>`, unique) and `city` as stored; `train_ids`
    uint8 `[H, W]`, 255 = ignore; `car_instances` int `[H, W]`, 0 = no car;
    `clusters` int `[H, W]`, 0 = background; `sample_probs` float
    `[N, H, W, K]`, the samples' softmax.
    """
    if np.shape(clusters) != np.shape(train_ids):
      raise CityscapesEvalError(f'{key}: clusters {np.shape(clusters)} and '
                                f'train_ids {np.shape(train_ids)} differ')
    predictions = car_instance_predictions(clusters, sample_probs,
                                           self.car_classes)
    self.add_predictions(key, city, train_ids, car_instances, predictions)
    return len(predictions)

  def add_predictions(self, key, city, train_ids, car_instances,
                      predictions: Sequence[Tuple[np.ndarray, float]]):
    """Adds one image with its `(mask [H, W], score)` car predictions, e.g.
    from `car_predictions_from_votes` on summaries reduced on the device."""
    if not self._cleanup.alive:
      raise CityscapesEvalError('CityscapesAP is closed (result() was called)')
    ground_truth_instance_ids(train_ids, car_instances)  # Check before writing.
    for i, (mask, _) in enumerate(predictions):
      if np.shape(mask) != np.shape(train_ids):
        raise CityscapesEvalError(f'{key}: prediction {i} has shape '
                                  f'{np.shape(mask)}, the image '
                                  f'{np.shape(train_ids)}')
    write_ground_truth(self._root / 'gt', key, city, train_ids, car_instances)
    write_prediction(self._root / 'pred', key, city, predictions)
    self.num_images += 1

  def result(self) -> Dict[str, float]:
    """`{'ap', 'ap50'}` for the cars of all added images; then closes."""
    if not self._cleanup.alive:
      raise CityscapesEvalError('CityscapesAP is closed (result() was called)')
    try:
      return evaluate_ap(self._root / 'gt', self._root / 'pred',
                         self.min_region_size, self.overlaps)
    finally:
      self.close()

  def close(self):
    """Deletes the temporary directory."""
    self._cleanup()
