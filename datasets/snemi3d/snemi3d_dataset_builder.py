"""SNEMI3D electron microscopy neurites as non-overlapping 2-D crops.

Raw files in `manual_dir` (the ISBI 2013 SNEMI3D training volume):

  train-input.tif    uint8 EM stack [Z, H, W] (100 slices of 1024x1024)
  train-labels.tif   one integer id per neurite, 0 = background/membrane

Slices are split along z (the paper: 0-79 train, 80-89 validation, 90-99
test) and each slice is cut into non-overlapping `crop_size` squares in raster
order (1280 / 160 / 160 crops of 256x256 on the real volume). Neurite ids are
kept as they are; the training pipeline maps them at random to a few labels
each time it draws an example. Example keys are `z<z>_y<row>_x<col>` with the
crop's top-left corner.
"""
import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds
import tifffile

INPUT_FILE = 'train-input.tif'
LABELS_FILE = 'train-labels.tif'
SPLITS = ('train', 'validation', 'test')

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Register at https://snemi3d.grand-challenge.org/, download the training data
(train-input.tif and train-labels.tif, often shipped as train-input.zip and
train-labels.zip) and put both .tif files directly into manual_dir.
"""


def _helpers():
  """This repository's `(image_codec, raw_checks)` modules.

  `tfds build datasets/snemi3d` imports this file while TFDS has put its
  HuggingFace stand-in at `sys.modules['datasets']`, so the repository's
  `datasets` helpers are imported on first use, not at module import.
  """
  # pylint: disable-next=g-import-not-at-top
  from datasets import image_codec, raw_checks
  return image_codec, raw_checks


@dataclasses.dataclass(eq=False)
class Snemi3dConfig(tfds.core.BuilderConfig):
  """How the volume is cut into examples.

  Attributes:
    crop_size: side of the square crops, in pixels; must divide the slice
      height and width.
    train_slices: `(start, stop)` z range (stop excluded) of the train split.
    validation_slices: z range of the validation split.
    test_slices: z range of the test split.
  """
  crop_size: int = 256
  train_slices: tuple[int, int] = (0, 80)
  validation_slices: tuple[int, int] = (80, 90)
  test_slices: tuple[int, int] = (90, 100)

  def __post_init__(self):
    if self.crop_size < 1:
      raise ValueError(f'crop_size must be positive, got {self.crop_size}')
    ranges = sorted(self.slice_ranges.items(), key=lambda item: item[1])
    for split, (start, stop) in ranges:
      if not 0 <= start < stop:
        raise ValueError(
            f'{split} slices must be (start, stop) with 0 <= start < stop, got '
            f'{(start, stop)}')
    for (first, (_, stop)), (second, (start, _)) in zip(ranges, ranges[1:]):
      if start < stop:
        raise ValueError(f'{first} and {second} slices overlap: '
                         f'{self.slice_ranges}')

  @property
  def slice_ranges(self) -> dict[str, tuple[int, int]]:
    return {'train': tuple(self.train_slices),
            'validation': tuple(self.validation_slices),
            'test': tuple(self.test_slices)}


def _read_tiff(path: pathlib.Path) -> np.ndarray:
  """Reads a TIFF stack; any failure raises `RawDataError` naming the file."""
  _, errors = _helpers()
  errors.require_file(path, 'SNEMI3D training volume')
  try:
    return tifffile.imread(path)
  except Exception as e:  # tifffile raises several types for corrupt files.
    raise errors.RawDataError(f'{path}: not a readable TIFF ({e})') from e


def read_volume(root: pathlib.Path, config: Snemi3dConfig
                ) -> tuple[np.ndarray, np.ndarray]:
  """Reads and checks both stacks against `config`.

  Args:
    root: the manual directory.
    config: the builder config (slice ranges and crop size).

  Returns:
    (EM uint8 [Z, H, W], neurite ids int32 [Z, H, W]).

  Raises:
    RawDataError: a missing or unreadable file, a wrong dtype or shape, ids
      that do not fit int32, or a stack too small for `config`.
  """
  _, errors = _helpers()
  input_path, labels_path = root / INPUT_FILE, root / LABELS_FILE
  em = _read_tiff(input_path)
  labels = _read_tiff(labels_path)
  if em.ndim != 3 or em.dtype != np.uint8:
    raise errors.RawDataError(
        f'{input_path}: expected a uint8 stack [Z, H, W], got shape '
        f'{em.shape} and dtype {em.dtype}')
  if not np.issubdtype(labels.dtype, np.integer):
    raise errors.RawDataError(
        f'{labels_path}: expected integer neurite ids, got dtype '
        f'{labels.dtype}')
  errors.check_shape(labels, em.shape, labels_path,
                     f'label stack ({input_path.name} is {em.shape})')
  if labels.size and (labels.min() < 0 or
                      labels.max() > np.iinfo(np.int32).max):
    raise errors.RawDataError(
        f'{labels_path}: neurite ids must lie in [0, 2**31), got '
        f'[{labels.min()}, {labels.max()}]')
  num_slices, height, width = em.shape
  last_stop = max(stop for _, stop in config.slice_ranges.values())
  if num_slices < last_stop:
    raise errors.RawDataError(
        f'{input_path}: has {num_slices} slices, config {config.name!r} reads '
        f'slices up to {last_stop - 1} ({config.slice_ranges})')
  if height % config.crop_size or width % config.crop_size:
    raise errors.RawDataError(
        f'{input_path}: slices of {height}x{width} do not split into '
        f'{config.crop_size}x{config.crop_size} crops (config '
        f'{config.name!r})')
  return em, labels.astype(np.int32)


class Builder(tfds.core.GeneratorBasedBuilder):
  """SNEMI3D EM crops with their neurite instance ids."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Crops of the SNEMI3D training volume.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
      Snemi3dConfig(
          name='paper',
          description='Kohl et al. 2019: z 0-79 / 80-89 / 90-99, 256x256.'),
      # The paper's split scaled to the 4-slice 64x64 `dummy_data/`.
      Snemi3dConfig(
          name='tiny', crop_size=32, train_slices=(0, 2),
          validation_slices=(2, 3), test_slices=(3, 4),
          description='4 slices: z 0-1 / 2 / 3, 32x32 crops (dummy data).'),
  ]
  DEFAULT_CONFIG_NAME = 'paper'

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.crop_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(
                shape=(size, size, 1), dtype=np.uint8, encoding_format='png'),
            # [S, S] neurite id per pixel, 0 = background/membrane.
            'instances': tfds.features.Tensor(
                shape=(size, size), dtype=np.int32),
            'z': np.int32,
            'key': tfds.features.Text(),
        }),
        homepage='https://snemi3d.grand-challenge.org/',
    )

  def _split_generators(self, dl_manager):
    _, errors = _helpers()
    em, labels = read_volume(errors.manual_dir(dl_manager),
                             self.builder_config)
    return {split: self._generate_examples(em, labels, start, stop)
            for split, (start, stop)
            in self.builder_config.slice_ranges.items()}

  def _generate_examples(self, em, labels, start, stop):
    image_codec, _ = _helpers()
    size = self.builder_config.crop_size
    _, height, width = em.shape
    for z in range(start, stop):
      for row in range(0, height, size):
        for col in range(0, width, size):
          key = f'z{z:03d}_y{row:04d}_x{col:04d}'
          window = (z, slice(row, row + size), slice(col, col + size))
          yield key, {
              'image': image_codec.encode_png(em[window]),
              'instances': labels[window],
              'z': z,
              'key': key,
          }
