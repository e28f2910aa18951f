"""TFDS builder for `synthetic_lesions`: generated, no download needed.

Each example stores the image (PNG), 4 gradings drawn from the true answer
distribution (like LIDC's 4 graders) and the generating parameters, from which
`generator.enumerate_modes` rebuilds every mode and its probability exactly.
Written as array_record; read it back with `tfds_utils.data_source`.

Build from the repository root with
`python -m datasets.tfds_utils synthetic_lesions --config=tiny` or in code with
`datasets.tfds_utils.load_builder('synthetic_lesions', data_dir, 'tiny')`
(the `tfds build` command line needs TensorFlow, which is not installed).
"""
import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from datasets import image_codec
from datasets.synthetic_lesions import generator

# Split name -> id that goes into each example's random seed.
SPLIT_IDS = {'train': 0, 'validation': 1, 'test': 2}


@dataclasses.dataclass(eq=False)
class LesionsConfig(tfds.core.BuilderConfig):
  """A synthetic lesions variant.

  Attributes:
    spec: generation settings (image size, lesion counts, probabilities,
      styles); see `generator.LesionsSpec`.
    num_train: examples in the train split.
    num_validation: examples in the validation split.
    num_test: examples in the test split.
    seed: base seed; example `i` of split `s` is generated from
      `(seed, SPLIT_IDS[s], i)`.
  """
  spec: generator.LesionsSpec = dataclasses.field(
      default_factory=generator.LesionsSpec)
  num_train: int = 10_000
  num_validation: int = 1_000
  num_test: int = 1_000
  seed: int = 0


class Builder(tfds.core.GeneratorBasedBuilder):
  """Synthetic lesions with multi-scale, exactly enumerable ambiguity."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      LesionsConfig(
          name='default',
          description='64x64, 1-3 lesions per image.'),
      LesionsConfig(
          name='many_lesions',
          description=('64x64, 4-6 lesions per image, lesions as in `default`: '
                       'tests generalisation to more lesions.'),
          spec=generator.LesionsSpec(min_lesions=4, max_lesions=6),
          num_train=2_000, num_validation=500, num_test=1_000, seed=1),
      LesionsConfig(
          name='tiny',
          description='32x32, 1-2 lesions, a handful of examples (tests).',
          spec=generator.LesionsSpec(image_size=32, max_lesions=2,
                                     radius_range=(0.07, 0.12)),
          num_train=16, num_validation=8, num_test=8, seed=2),
  ]
  DEFAULT_CONFIG_NAME = 'default'

  def __init__(self, *, file_format=None, **kwargs):
    # array_record gives random access without TensorFlow; `tfds build` would
    # otherwise default to tfrecord.
    super().__init__(file_format=file_format or 'array_record', **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    spec = self.builder_config.spec
    size = spec.image_size
    num_styles = len(spec.style_scales)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(size, size, 1),
                                         dtype=np.uint8),
            'graders': tfds.features.Tensor(
                shape=(spec.num_graders, size, size), dtype=np.uint8),
            'lesion_centres': tfds.features.Tensor(shape=(None, 2),
                                                   dtype=np.float32),
            'lesion_radii': tfds.features.Tensor(shape=(None,),
                                                 dtype=np.float32),
            'lesion_harmonics': tfds.features.Tensor(
                shape=(None, generator.NUM_HARMONICS, 2), dtype=np.float32),
            'lesion_probs': tfds.features.Tensor(shape=(None,),
                                                 dtype=np.float32),
            'style_scales': tfds.features.Tensor(shape=(num_styles,),
                                                 dtype=np.float32),
            'style_probs': tfds.features.Tensor(shape=(num_styles,),
                                                dtype=np.float32),
            'index': tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=None,
        homepage='https://arxiv.org/abs/1905.13077',
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
