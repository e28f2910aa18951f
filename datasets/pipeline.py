"""Input pipeline: grain training loader and evaluation iteration.

`make_train_iterator` gives an endless, seeded, shuffled, per-host sharded
stream of batches from a TFDS array_record data source; its position is
checkpointable (`get_state()` -> bytes, `set_state(bytes)`), and resuming from
a saved state yields exactly the batches the uninterrupted iterator would have
produced. `eval_examples` walks a split in stored order, one dict per image.

`data_config` (an `ml_collections.ConfigDict` or a dict) keys read here:

  name: data set, a folder of `datasets/`: 'synthetic_lesions',
    'synthetic_cells', 'lidc_crops', 'lidc_v1', 'snemi3d' or
    'cityscapes_cars'.
  builder_config: TFDS builder config name, or None for the builder's default.
  data_dir: TFDS data directory, or None for the TFDS default.
  manual_dir: folder with the raw files of a real data set (None for the
    synthetic ones). The data set is built on first use.
  train_split: split `make_train_iterator` reads, e.g. 'train'.
  num_instance_ids: (synthetic_cells, snemi3d; required) labels the instance
    ids are mapped to at random per draw; K = num_instance_ids + 1.
  num_car_ids: (cityscapes_cars; required) car classes each car draws from;
    K = 18 + num_car_ids.
  image_size: optional (height, width) or int. cityscapes_cars: images and
    labels are resized to it (bilinear / nearest) for training and
    evaluation. Other data sets: if given it must equal the stored size (the
    synthetic sets choose their size by `builder_config`). Default None.
  worker_count: optional, grain worker processes; 0 (default) runs the
    preprocessing in the calling process. Workers need absl flags parsed
    (an absl app). A saved iterator state only restores into a loader with
    the same worker_count.
  read_threads: optional, grain `ReadOptions.num_threads` reading records in
    parallel (default 2).
  prefetch_buffer_size: optional, grain `ReadOptions.prefetch_buffer_size`,
    records read ahead (default 16).
"""
from collections.abc import Iterator
import dataclasses
from typing import Any, Callable

from absl import flags
import grain
import numpy as np

from datasets import preprocess
from datasets import tfds_utils

_DEFAULT_READ_THREADS = 2
_DEFAULT_PREFETCH_BUFFER_SIZE = 16


@dataclasses.dataclass(frozen=True)
class _Task:
  """How one data set is preprocessed.

  Attributes:
    train_operations: data_config -> grain transforms for one training record.
    eval_example: stored record -> evaluation dict.
    num_classes: data_config -> K.
    resizes: whether `image_size` resizes the data (else it is only checked).
  """
  train_operations: Callable[[Any], list[grain.transforms.Transformation]]
  eval_example: Callable[[dict], dict]
  num_classes: Callable[[Any], int]
  resizes: bool = False


def _required(data_config, key: str, name: str):
  value = data_config.get(key, None)
  if value is None:
    raise ValueError(f'data_config.{key} is required for data set {name!r}')
  if isinstance(value, int) and value < 1:
    raise ValueError(f'data_config.{key} must be >= 1, got {value}')
  return value


def _image_size(data_config) -> tuple[int, int] | None:
  size = data_config.get('image_size', None)
  if size is None:
    return None
  if isinstance(size, int):
    return (size, size)
  size = tuple(int(s) for s in size)
  if len(size) != 2 or min(size) < 1:
    raise ValueError(f'data_config.image_size must be an int or (height, '
                     f'width), got {size}')
  return size


def _cityscapes_operations(data_config):
  num_car_ids = _required(data_config, 'num_car_ids', 'cityscapes_cars')
  operations = []
  if _image_size(data_config) is not None:
    operations.append(preprocess.ResizeCityscapes(_image_size(data_config)))
  return operations + [preprocess.RelabelCars(num_car_ids)]


def _instance_task(name: str) -> _Task:
  return _Task(
      train_operations=lambda c: [preprocess.RelabelInstances(
          _required(c, 'num_instance_ids', name))],
      eval_example=preprocess.instances_eval_example,
      num_classes=lambda c: _required(c, 'num_instance_ids', name) + 1)


_TASKS = {
    'synthetic_lesions': _Task(
        train_operations=lambda c: [preprocess.DrawGrader()],
        eval_example=preprocess.lesions_eval_example,
        num_classes=lambda c: 2),
    'lidc_crops': _Task(
        train_operations=lambda c: [preprocess.DrawGrader()],
        eval_example=preprocess.lidc_eval_example,
        num_classes=lambda c: 2),
    'lidc_v1': _Task(
        train_operations=lambda c: [preprocess.DrawGrader()],
        eval_example=preprocess.lidc_v1_eval_example,
        num_classes=lambda c: 2),
    'synthetic_cells': _instance_task('synthetic_cells'),
    'snemi3d': _instance_task('snemi3d'),
    'cityscapes_cars': _Task(
        train_operations=_cityscapes_operations,
        eval_example=preprocess.cityscapes_eval_example,
        num_classes=lambda c: (preprocess.CITYSCAPES_NUM_TRAIN_IDS - 1 +
                               _required(c, 'num_car_ids', 'cityscapes_cars')),
        resizes=True),
}


def _task(data_config) -> _Task:
  name = data_config.get('name', None)
  if name not in _TASKS:
    raise ValueError(f'data_config.name must be one of {sorted(_TASKS)}, got '
                     f'{name!r}')
  return _TASKS[name]


def num_classes(data_config) -> int:
  """K, the number of classes of the training segmentation."""
  return _task(data_config).num_classes(data_config)


def _source(data_config, split: str):
  _task(data_config)  # Validates the name before anything is built.
  return tfds_utils.data_source(
      data_config['name'], split, data_config.get('data_dir', None),
      data_config.get('builder_config', None),
      data_config.get('manual_dir', None))


def _check_stored_size(data_config, source):
  """Stored images must match `image_size` where it is not a resize."""
  size = _image_size(data_config)
  if size is None or _task(data_config).resizes or not len(source):
    return
  stored = tuple(np.shape(source[0]['image'])[:2])
  if stored != size:
    raise ValueError(
        f'data_config.image_size {size} differs from the stored size '
        f'{stored} of {data_config["name"]}/'
        f'{data_config.get("builder_config", None)}')


def make_train_iterator(data_config, *, batch_size: int, seed: int,
                        shard_index: int = 0,
                        shard_count: int = 1) -> grain.DataLoaderIterator:
  """Endless iterator of training batches of this host's shard.

  Each host (process) reads `1/shard_count` of the records, reshuffled every
  epoch; every draw (grader, instance relabelling, car classes) is seeded by
  `seed` and the record's position, so the stream depends only on the
  arguments.

  Args:
    data_config: see the module docstring.
    batch_size: examples per batch on this host (the remainder is dropped).
    seed: shuffling and preprocessing seed, 0 <= seed < 2**32.
    shard_index: this host's shard, in `[0, shard_count)`.
    shard_count: number of hosts / shards.

  Returns:
    A grain `DataLoaderIterator`: `next()` gives `{'image': float32
    [B, H, W, C], 'segmentation': int32 [B, H, W], 'mask': float32
    [B, H, W]}`; `get_state()` -> bytes (JSON), `set_state(bytes)`.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  if not 0 <= shard_index < shard_count:
    raise ValueError(f'need 0 <= shard_index < shard_count, got '
                     f'{shard_index}, {shard_count}')
  if not 0 <= seed < 2**32:
    raise ValueError(f'seed must be in [0, 2**32), got {seed}')
  worker_count = data_config.get('worker_count', 0)
  if worker_count and not flags.FLAGS.is_parsed():
    raise ValueError(
        f'data_config.worker_count={worker_count}: grain worker processes read '
        'absl flags; run under absl.app.run or call '
        'absl.flags.FLAGS.mark_as_parsed() first (or use worker_count=0)')
  task = _task(data_config)
  operations = task.train_operations(data_config)
  source = _source(data_config,
                   _required(data_config, 'train_split', data_config['name']))
  if len(source) < shard_count:
    raise ValueError(f'{len(source)} records cannot fill {shard_count} shards')
  _check_stored_size(data_config, source)
  shard_options = grain.sharding.ShardOptions(
      shard_index=shard_index, shard_count=shard_count, drop_remainder=False)
  sampler = grain.samplers.IndexSampler(
      num_records=len(source), shard_options=shard_options, shuffle=True,
      num_epochs=None, seed=seed)
  loader = grain.DataLoader(
      data_source=source, sampler=sampler,
      operations=operations + [
          grain.transforms.Batch(batch_size=batch_size, drop_remainder=True)],
      worker_count=worker_count,
      shard_options=shard_options,
      read_options=grain.ReadOptions(
          num_threads=data_config.get('read_threads', _DEFAULT_READ_THREADS),
          prefetch_buffer_size=data_config.get(
              'prefetch_buffer_size', _DEFAULT_PREFETCH_BUFFER_SIZE)))
  return iter(loader)


def eval_examples(data_config, split: str, *,
                  limit: int | None = None) -> Iterator[dict]:
  """Yields the examples of `split` in stored order, one dict per image.

  Keys (numpy): `image` float32 `[H, W, C]` and `mask` float32 `[H, W]`
  always; synthetic_lesions adds `graders` int32 `[G, H, W]`, `modes` int32
  `[M, H, W]`, `mode_probs` float64 `[M]`, `lesion_params` and `index`;
  lidc_crops (centre 128x128 crop) adds `graders`, `subset_b`, `patient_id`;
  lidc_v1 (128x128 as stored) adds `graders`, `subset_b`, `series_uid`;
  synthetic_cells / snemi3d add `instances` int32 `[H, W]`; cityscapes_cars
  adds `instances` (cars) and `train_ids` int32 `[H, W]` (255 = ignore).

  Args:
    data_config: see the module docstring.
    split: e.g. 'validation' or 'test'.
    limit: at most this many examples (None = all).
  """
  task = _task(data_config)
  source = _source(data_config, split)
  _check_stored_size(data_config, source)
  size = _image_size(data_config)
  count = len(source) if limit is None else min(int(limit), len(source))
  for index in range(count):
    record = source[index]
    if task.resizes and size is not None:
      record = preprocess.resize_record(record, size,
                                        ('train_ids', 'car_instances'))
    yield task.eval_example(record)


def num_eval_examples(data_config, split: str, *,
                      limit: int | None = None) -> int:
  """How many examples `eval_examples(data_config, split, limit=limit)`
  yields (for progress totals; builds the data set if needed)."""
  count = len(_source(data_config, split))
  return count if limit is None else min(int(limit), count)
