"""Per-task preprocessing: stored records -> training examples / eval examples.

Training transforms are grain transforms (picklable, so they also run in grain
worker processes). The random ones are `grain.transforms.RandomMap`s: grain
hands each record a numpy generator seeded from the loader seed and the
record's position in the sampled order, so every draw is reproducible.

Training example (one record; the loader stacks them into a batch):
  `image` float32 `[H, W, C]` in [0, 1] (kept non-negative: the HPU-Net's
  first res-block applies ReLU to the raw image), `segmentation` int32
  `[H, W]` in `[0, K)`, `mask` float32 `[H, W]` (1 = pixel enters the loss).

Evaluation examples are documented in `docs/interfaces.md` and per task below.
"""
import numpy as np
from PIL import Image
import grain

from datasets.synthetic_lesions import generator as lesions_generator
from datasets.synthetic_lesions import generator_v2 as lesions_generator_v2
# The one pixel scaling, shared with every user of a trained model.
from hpunet_jax.images import image_to_float

# Cityscapes train id of the car class; the alternative car classes follow the
# 19 train ids: 19, 20, ... (`num_car_ids - 1` of them).
CITYSCAPES_CAR_TRAIN_ID = 13
CITYSCAPES_NUM_TRAIN_IDS = 19
CITYSCAPES_IGNORE_ID = 255
# LIDC evaluation uses the centre 128x128 of the 180x180 crops ([26:-26]).
LIDC_EVAL_CROP = 128


def _full_mask(image: np.ndarray) -> np.ndarray:
  return np.ones(image.shape[:2], np.float32)


def centre_crop(array: np.ndarray, size: int, axes=(0, 1)) -> np.ndarray:
  """Crops the centre `size x size` of `array` over the two given axes."""
  slices = [slice(None)] * array.ndim
  for axis in axes:
    start = (array.shape[axis] - size) // 2
    if start < 0:
      raise ValueError(f'cannot crop {size} px from an axis of '
                       f'{array.shape[axis]} px')
    slices[axis] = slice(start, start + size)
  return array[tuple(slices)]


def relabel_instances(instances: np.ndarray, num_labels: int,
                      rng: np.random.Generator) -> np.ndarray:
  """Maps every instance id > 0 to a uniform random label in `1..num_labels`.

  Several instances may share a label (as in the paper's SNEMI3D set-up);
  0 (membrane / background) stays 0.

  Args:
    instances: int `[H, W]` instance ids.
    num_labels: number of labels to draw from.
    rng: numpy generator.

  Returns:
    int32 `[H, W]` labels in `[0, num_labels]`.
  """
  ids, inverse = np.unique(instances, return_inverse=True)
  labels = rng.integers(1, num_labels + 1, size=len(ids)).astype(np.int32)
  labels[ids == 0] = 0
  return labels[inverse.reshape(instances.shape)]


def cityscapes_segmentation(train_ids: np.ndarray, car_instances: np.ndarray,
                            num_car_ids: int, rng: np.random.Generator):
  """Train ids with every car given one of `num_car_ids` car classes.

  Args:
    train_ids: uint8 `[H, W]`, 0..18, 255 = ignore.
    car_instances: int `[H, W]`, 0 = no car, 1..n per car.
    num_car_ids: car classes: 13, then 19, 20, ... (`num_car_ids - 1` extra).
    rng: numpy generator.

  Returns:
    segmentation: int32 `[H, W]` in `[0, 18 + num_car_ids)`; ignore -> 0.
    mask: float32 `[H, W]`, 0 on ignore pixels.
  """
  train_ids = np.asarray(train_ids, np.int32)
  ignore = train_ids == CITYSCAPES_IGNORE_ID
  segmentation = np.where(ignore, 0, train_ids)
  car_ids = np.unique(car_instances)
  car_ids = car_ids[car_ids > 0]
  choice = rng.integers(num_car_ids, size=len(car_ids))
  car_classes = np.where(choice == 0, CITYSCAPES_CAR_TRAIN_ID,
                         CITYSCAPES_NUM_TRAIN_IDS + choice - 1)
  is_car = car_instances > 0
  segmentation[is_car] = car_classes[np.searchsorted(car_ids,
                                                     car_instances[is_car])]
  return segmentation.astype(np.int32), (~ignore).astype(np.float32)


def resize_record(record: dict, image_size: tuple[int, int],
                  label_keys: tuple[str, ...]) -> dict:
  """Resizes `image` bilinearly and every key in `label_keys` nearest."""
  height, width = image_size
  out = dict(record)
  image = np.asarray(record['image'])
  if image.shape[:2] == (height, width):
    return out
  channels = [Image.fromarray(image[..., c]).resize((width, height),
                                                    Image.BILINEAR)
              for c in range(image.shape[-1])]
  out['image'] = np.stack([np.asarray(c) for c in channels], axis=-1)
  for key in label_keys:
    labels = np.asarray(record[key])
    resized = Image.fromarray(labels.astype(np.int32)).resize(
        (width, height), Image.NEAREST)
    out[key] = np.asarray(resized).astype(labels.dtype)
  return out


class DrawGrader(grain.transforms.RandomMap):
  """LIDC / synthetic lesions: one of the graders at random, K = 2."""

  def random_map(self, record, rng: np.random.Generator):
    graders = record['graders']
    grader = graders[rng.integers(len(graders))]
    return {'image': image_to_float(record['image']),
            'segmentation': (grader > 0).astype(np.int32),
            'mask': _full_mask(record['image'])}


class RelabelInstances(grain.transforms.RandomMap):
  """SNEMI3D / synthetic cells: instance ids -> random labels, K = n + 1."""

  def __init__(self, num_instance_ids: int):
    self.num_instance_ids = num_instance_ids

  def random_map(self, record, rng: np.random.Generator):
    return {'image': image_to_float(record['image']),
            'segmentation': relabel_instances(record['instances'],
                                              self.num_instance_ids, rng),
            'mask': _full_mask(record['image'])}


class ResizeCityscapes(grain.transforms.Map):
  """Resizes image (bilinear) and label maps (nearest) to `image_size`."""

  def __init__(self, image_size: tuple[int, int]):
    self.image_size = image_size

  def map(self, record):
    return resize_record(record, self.image_size,
                         ('train_ids', 'car_instances'))


class RelabelCars(grain.transforms.RandomMap):
  """Cityscapes: 19 train ids + random car classes, ignore -> mask 0."""

  def __init__(self, num_car_ids: int):
    self.num_car_ids = num_car_ids

  def random_map(self, record, rng: np.random.Generator):
    segmentation, mask = cityscapes_segmentation(
        record['train_ids'], record['car_instances'], self.num_car_ids, rng)
    return {'image': image_to_float(record['image']),
            'segmentation': segmentation, 'mask': mask}


def lesions_eval_example(record) -> dict:
  """Synthetic lesions: `image`, `graders`, `modes`, `mode_probs`, `mask`,
  `lesion_params` (a v1 `generator.LesionParams` or a
  `generator_v2.LesionParamsV2`, for `oracle_sample`), `index`."""
  params = lesions_generator_v2.params_from_features(record)
  modes, mode_probs = lesions_generator.enumerate_modes(params)
  return {'image': image_to_float(record['image']),
          'graders': np.asarray(record['graders'], np.int32),
          'modes': modes, 'mode_probs': mode_probs,
          'mask': _full_mask(record['image']),
          'lesion_params': params, 'index': int(record['index'])}


def lidc_eval_example(record) -> dict:
  """LIDC: centre 128x128 `image`, `graders` (0/1), `mask`, `subset_b`,
  `patient_id` (str)."""
  image = centre_crop(np.asarray(record['image']), LIDC_EVAL_CROP)
  graders = centre_crop(np.asarray(record['graders']), LIDC_EVAL_CROP,
                        axes=(1, 2))
  patient_id = record['patient_id']
  if isinstance(patient_id, bytes):
    patient_id = patient_id.decode('utf-8')
  return {'image': image_to_float(image),
          'graders': (graders > 0).astype(np.int32),
          'mask': _full_mask(image),
          'subset_b': bool(record['subset_b']), 'patient_id': patient_id}


def lidc_v1_eval_example(record) -> dict:
  """LIDC v1 (128x128, no crop): `image`, `graders` (0/1), `mask`,
  `subset_b`, `series_uid` (str)."""
  series_uid = record['series_uid']
  if isinstance(series_uid, bytes):
    series_uid = series_uid.decode('utf-8')
  image = np.asarray(record['image'])
  return {'image': image_to_float(image),
          'graders': (np.asarray(record['graders']) > 0).astype(np.int32),
          'mask': _full_mask(image),
          'subset_b': bool(record['subset_b']), 'series_uid': series_uid}


def instances_eval_example(record) -> dict:
  """SNEMI3D / synthetic cells: `image`, `instances`, `mask`."""
  return {'image': image_to_float(record['image']),
          'instances': np.asarray(record['instances'], np.int32),
          'mask': _full_mask(record['image'])}


def cityscapes_eval_example(record) -> dict:
  """Cityscapes: `image`, `instances` (cars, 0 = none), `train_ids` (int32,
  255 = ignore), `mask` (0 on ignore pixels), and the `key` and `city` (str)
  the official evaluator's files are named by."""
  train_ids = np.asarray(record['train_ids'], np.int32)
  text = lambda v: v.decode('utf-8') if isinstance(v, bytes) else str(v)
  return {'image': image_to_float(record['image']),
          'instances': np.asarray(record['car_instances'], np.int32),
          'train_ids': train_ids,
          'mask': (train_ids != CITYSCAPES_IGNORE_ID).astype(np.float32),
          'key': text(record['key']), 'city': text(record['city'])}
