"""Reads and checks the 128x128 LIDC release ("LIDC v1") from its two formats.

* Pickle (the Probabilistic U-Net PyTorch release, `load_LIDC_data.py` of
  stefanknegt/Probabilistic-Unet-Pytorch): one or more `*.pickle` files, each
  a dict keyed by slice; every value is a dict with `image` (float `[128, 128]`
  in [0, 1]), `masks` (4 masks `[128, 128]` in {0, 1}) and `series_uid` (str).
  The files are merged (their keys must not repeat).
* HDF5 (PHiSeg's `data/lidc_data_loader.py`, `data_lidc.hdf5`): groups
  `train`, `val`, `test`, each with `images` `[N, 128, 128]` (the pickle's
  image - 0.5), `labels` `[N, 128, 128, 4]` uint8 and `uids` `[N]` (Python's
  `hash()` of the series uid). CCDM's copy of that loader skips the transpose
  and writes `labels` `[N, 4, 128, 128]`; both layouts are read.

Unpickling runs code from the file: read only pickles you downloaded yourself.
Every problem raises one `RawDataError` naming the file and the key.
"""
import dataclasses
import pathlib
import pickle
from typing import Iterator, Sequence

import numpy as np

IMAGE_SIZE = 128
NUM_GRADERS = 4
PICKLE_FIELDS = ('image', 'masks', 'series_uid')
HDF5_FIELDS = ('images', 'labels', 'uids')
# TFDS split -> HDF5 group of PHiSeg's file.
HDF5_GROUPS = {'train': 'train', 'validation': 'val', 'test': 'test'}
# Pixel values may exceed [0, 1] by this much (float rounding of image - 0.5).
RANGE_TOLERANCE = 1e-6


def _errors():
  """`datasets.raw_checks`, imported on first use (see the builder module)."""
  # pylint: disable-next=g-import-not-at-top
  from datasets import raw_checks
  return raw_checks


@dataclasses.dataclass(frozen=True)
class Slice:
  """One checked example: image float32 `[128, 128]` in [0, 1], graders
  uint8 `[4, 128, 128]` in {0, 1}."""
  key: str
  series_uid: str
  image: np.ndarray
  graders: np.ndarray


def check_image(image, where: str) -> np.ndarray:
  """float `[128, 128]` in [0, 1] (up to RANGE_TOLERANCE) -> float32."""
  errors = _errors()
  image = np.asarray(image)
  if not (np.issubdtype(image.dtype, np.floating)
          or np.issubdtype(image.dtype, np.integer)):
    raise errors.RawDataError(f'{where}: image has dtype {image.dtype}, '
                              'expected floats in [0, 1]')
  if tuple(image.shape) != (IMAGE_SIZE, IMAGE_SIZE):
    raise errors.RawDataError(f'{where}: image has shape {image.shape}, '
                              f'expected ({IMAGE_SIZE}, {IMAGE_SIZE})')
  image = image.astype(np.float64)
  low, high = float(np.min(image)), float(np.max(image))
  if not (np.isfinite(low) and np.isfinite(high)
          and low >= -RANGE_TOLERANCE and high <= 1 + RANGE_TOLERANCE):
    raise errors.RawDataError(f'{where}: image values span [{low}, {high}], '
                              'expected [0, 1]')
  return np.clip(image, 0.0, 1.0).astype(np.float32)


def check_graders(masks, where: str) -> np.ndarray:
  """4 masks `[128, 128]` in {0, 1} -> uint8 `[4, 128, 128]`."""
  errors = _errors()
  try:
    masks = np.asarray(masks)
  except ValueError as e:  # Ragged lists of masks.
    raise errors.RawDataError(f'{where}: masks are not 4 arrays of '
                              f'{IMAGE_SIZE}x{IMAGE_SIZE} ({e})') from e
  if masks.ndim != 3 or len(masks) != NUM_GRADERS:
    count = len(masks) if masks.ndim else 0
    raise errors.RawDataError(
        f'{where}: expected {NUM_GRADERS} masks of {IMAGE_SIZE}x{IMAGE_SIZE}, '
        f'got {count} (array shape {masks.shape})')
  if masks.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
    raise errors.RawDataError(f'{where}: masks have shape {masks.shape}, '
                              f'expected ({NUM_GRADERS}, {IMAGE_SIZE}, '
                              f'{IMAGE_SIZE})')
  if masks.dtype.kind not in 'biuf':
    raise errors.RawDataError(f'{where}: masks have dtype {masks.dtype}')
  errors.check_values(masks, (0, 1), where, 'masks')
  return masks.astype(np.uint8)


def _text(value, where: str) -> str:
  if isinstance(value, bytes):
    value = value.decode('utf-8')
  if not isinstance(value, str) or not value:
    raise _errors().RawDataError(f'{where}: series_uid must be a non-empty '
                                 f'string, got {value!r}')
  return value


def pickle_files(root: pathlib.Path) -> list[pathlib.Path]:
  """The `*.pickle` files of `root`, sorted; raises if there is none."""
  files = sorted(root.glob('*.pickle'))
  if not files:
    hdf5 = sorted(p.name for p in root.glob('*.h*5'))
    hint = (f'; found {hdf5}: build the config hdf5 or hdf5_groups'
            if hdf5 else '')
    raise _errors().RawDataError(f'{root}: no *.pickle file (the LIDC v1 '
                                 f'release, e.g. data_lidc.pickle){hint}')
  return files


def read_pickles(files: Sequence[pathlib.Path]) -> list[Slice]:
  """Loads and checks every slice of the pickle files (in file, key order)."""
  errors = _errors()
  slices, origin = [], {}
  for path in files:
    try:
      with open(path, 'rb') as f:
        data = pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError,
            IndexError, TypeError, ValueError) as e:
      raise errors.RawDataError(f'{path}: not a readable pickle ({e!r})') from e
    if not isinstance(data, dict):
      raise errors.RawDataError(f'{path}: expected a dict keyed by slice, got '
                                f'{type(data).__name__}')
    for raw_key, value in data.items():
      key = str(raw_key)
      where = f'{path}: key {key!r}'
      if key in origin:
        raise errors.RawDataError(f'{where} is also in {origin[key]}')
      origin[key] = path
      if not isinstance(value, dict):
        raise errors.RawDataError(f'{where}: expected a dict with '
                                  f'{PICKLE_FIELDS}, got {type(value).__name__}')
      missing = [field for field in PICKLE_FIELDS if field not in value]
      if missing:
        raise errors.RawDataError(f'{where}: missing {missing[0]!r} (each '
                                  f'slice needs {PICKLE_FIELDS})')
      slices.append(Slice(
          key=key, series_uid=_text(value['series_uid'], where),
          image=check_image(value['image'], where),
          graders=check_graders(value['masks'], where)))
  if not slices:
    raise errors.RawDataError(f'{files[0]}: no slices in {len(files)} pickle '
                              'file(s)')
  return slices


def hdf5_file(root: pathlib.Path) -> pathlib.Path:
  """The one `*.hdf5` / `*.h5` file of `root`."""
  files = sorted(list(root.glob('*.hdf5')) + list(root.glob('*.h5')))
  if len(files) != 1:
    raise _errors().RawDataError(
        f'{root}: expected one *.hdf5 file (PHiSeg\'s data_lidc.hdf5), found '
        f'{[f.name for f in files] or "none"}')
  return files[0]


def _open_hdf5(path: pathlib.Path):
  import h5py  # pylint: disable=g-import-not-at-top
  try:
    return h5py.File(path, 'r')
  except OSError as e:
    raise _errors().RawDataError(f'{path}: not a readable HDF5 file '
                                 f'({e})') from e


def _labels_are_graders_last(labels, where: str) -> bool:
  """Checks `labels`' shape; True for PHiSeg's `[N, 128, 128, 4]`."""
  shape = tuple(labels.shape)
  if len(shape) == 4 and shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, NUM_GRADERS):
    return True
  if len(shape) == 4 and shape[1:] == (NUM_GRADERS, IMAGE_SIZE, IMAGE_SIZE):
    return False
  raise _errors().RawDataError(
      f'{where}: labels have shape {shape}, expected [N, {IMAGE_SIZE}, '
      f'{IMAGE_SIZE}, {NUM_GRADERS}] (or [N, {NUM_GRADERS}, {IMAGE_SIZE}, '
      f'{IMAGE_SIZE}])')


def hdf5_index(path: pathlib.Path) -> dict[str, list[str]]:
  """Checks the groups' layout; returns {group: series uid per example}."""
  errors = _errors()
  index = {}
  with _open_hdf5(path) as f:
    for group in HDF5_GROUPS.values():
      if group not in f:
        raise errors.RawDataError(
            f'{path}: missing group {group!r} (expected groups '
            f'{list(HDF5_GROUPS.values())}, found {sorted(f.keys())})')
      for field in HDF5_FIELDS:
        if field not in f[group]:
          raise errors.RawDataError(f'{path}: missing dataset '
                                    f'{group}/{field}')
      images, labels, uids = (f[group][field] for field in HDF5_FIELDS)
      where = f'{path}: {group}'
      if tuple(images.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE) or (
          images.ndim != 3):
        raise errors.RawDataError(f'{where}/images have shape {images.shape}, '
                                  f'expected [N, {IMAGE_SIZE}, {IMAGE_SIZE}]')
      _labels_are_graders_last(labels, f'{where}/labels')
      if uids.ndim != 1 or not len(images) == len(labels) == len(uids):
        raise errors.RawDataError(
            f'{where}: images, labels and uids differ in length: '
            f'{images.shape}, {labels.shape}, {uids.shape}')
      index[group] = [_text(u, f'{where}/uids') if isinstance(u, bytes)
                      else str(u) for u in uids[()]]
  return index


def read_hdf5(path: pathlib.Path,
              wanted: Sequence[tuple[str, int]]) -> Iterator[Slice]:
  """Yields the checked slices `(group, index)` of `wanted`, in that order.

  Images are stored as image - 0.5; they come back in [0, 1].
  """
  with _open_hdf5(path) as f:
    last_group = None
    for group, index in wanted:
      if group != last_group:
        images, labels, uids = (f[group][field] for field in HDF5_FIELDS)
        graders_last = _labels_are_graders_last(labels, f'{path}: {group}')
        last_group = group
      key = f'{group}/{index:05d}'
      where = f'{path}: {key}'
      grader_masks = labels[index]
      if graders_last:
        grader_masks = np.moveaxis(grader_masks, -1, 0)
      uid = uids[index]
      yield Slice(key=key, series_uid=(_text(uid, where)
                                       if isinstance(uid, bytes) else str(uid)),
                  image=check_image(np.asarray(images[index]) + 0.5, where),
                  graders=check_graders(grader_masks, where))


def split_series(series: Sequence[str], fractions: Sequence[float],
                 seed: int) -> dict[str, list[str]]:
  """Splits the distinct series at random into train / validation / test.

  The sorted distinct uids are permuted with `np.random.default_rng(seed)`;
  the first `round(f_train * n)` go to train, the next `round(f_val * n)` to
  validation, the rest to test. Every split gets at least one series.

  Returns:
    {split: sorted series uids}.
  """
  errors = _errors()
  fractions = tuple(float(f) for f in fractions)
  if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-9:
    raise ValueError(f'split_fractions must be 3 positive numbers summing to '
                     f'1 (train, validation, test), got {fractions}')
  distinct = sorted(set(series))
  if len(distinct) < 3:
    raise errors.RawDataError(f'{len(distinct)} distinct series_uid values '
                              'cannot fill train, validation and test')
  order = np.random.default_rng(seed).permutation(len(distinct))
  num_train = max(1, round(fractions[0] * len(distinct)))
  num_val = max(1, round(fractions[1] * len(distinct)))
  num_train = min(num_train, len(distinct) - 2)
  num_val = min(num_val, len(distinct) - num_train - 1)
  shuffled = [distinct[i] for i in order]
  parts = (shuffled[:num_train], shuffled[num_train:num_train + num_val],
           shuffled[num_train + num_val:])
  return {split: sorted(part)
          for split, part in zip(('train', 'validation', 'test'), parts)}
