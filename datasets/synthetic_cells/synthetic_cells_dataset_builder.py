"""TFDS builder for `synthetic_cells`: generated, no download needed.

Features as in `snemi3d`: `image` (PNG, uint8 `[H, W, 1]`) and `instances`
(int32 `[H, W]`, 0 = membrane). Written as array_record; build with
`python -m datasets.tfds_utils synthetic_cells --config=tiny` or
`datasets.tfds_utils.load_builder('synthetic_cells', data_dir, 'tiny')`.
"""
import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from datasets import image_codec
from datasets.synthetic_cells import generator

# Split name -> id that goes into each example's random seed.
SPLIT_IDS = {'train': 0, 'validation': 1, 'test': 2}


@dataclasses.dataclass(eq=False)
class CellsConfig(tfds.core.BuilderConfig):
  """A synthetic cells variant.

  Attributes:
    spec: generation settings; see `generator.CellsSpec`.
    num_train: examples in the train split.
    num_validation: examples in the validation split.
    num_test: examples in the test split.
    seed: base seed; example `i` of split `s` is generated from
      `(seed, SPLIT_IDS[s], i)`.
  """
  spec: generator.CellsSpec = dataclasses.field(
      default_factory=generator.CellsSpec)
  num_train: int = 2_000
  num_validation: int = 200
  num_test: int = 200
  seed: int = 0


class Builder(tfds.core.GeneratorBasedBuilder):
  """Voronoi cells with membranes: instance ids per pixel."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      CellsConfig(name='default', description='64x64, 10-20 cells.'),
      CellsConfig(
          name='dense', description='64x64, 25-40 smaller cells.',
          spec=generator.CellsSpec(min_cells=25, max_cells=40,
                                   membrane_width=1.2, border_wobble=1.0),
          seed=1),
      CellsConfig(
          name='large', description='128x128, 40-80 cells.',
          spec=generator.CellsSpec(image_size=128, min_cells=40,
                                   max_cells=80),
          seed=2),
      CellsConfig(
          name='tiny', description='32x32, 4-8 cells, a handful of examples.',
          spec=generator.CellsSpec(image_size=32, min_cells=4, max_cells=8,
                                   border_wobble=1.0),
          num_train=16, num_validation=8, num_test=8, seed=3),
  ]
  DEFAULT_CONFIG_NAME = 'default'

  def __init__(self, *, file_format=None, **kwargs):
    # array_record gives random access without TensorFlow.
    super().__init__(file_format=file_format or 'array_record', **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.spec.image_size
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(size, size, 1),
                                         dtype=np.uint8),
            'instances': tfds.features.Tensor(shape=(size, size),
                                              dtype=np.int32),
            'index': tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=None,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download.
    config = self.builder_config
    sizes = {'train': config.num_train, 'validation': config.num_validation,
             'test': config.num_test}
    return {split: self._generate_examples(split, size)
            for split, size in sizes.items()}

  def _generate_examples(self, split: str, num_examples: int):
    config = self.builder_config
    for index in range(num_examples):
      example = generator.generate_example(config.spec, config.seed,
                                           SPLIT_IDS[split], index)
      example['image'] = image_codec.encode_png(example['image'])
      example['index'] = index
      yield index, example
