"""TFDS builder for `synthetic_lesions`: generated, no download needed.

Each example stores the image (PNG), 4 gradings drawn from the true answer
distribution (like LIDC's 4 graders) and the generating parameters, from which
`generator.enumerate_modes` rebuilds every mode and its probability exactly.
Written as array_record; read it back with `tfds_utils.data_source`.

Configs: version 2 (`generator_v2`, well posed: the image shows every
lesion's outline and probability exactly) is `default` (2-4 lesions),
`few_lesions` (1), `many_lesions` (5-6) and `tiny`; version 1 (`generator`,
the data of the first study, results/v1/) stays reachable as `v1`, `v1_many_lesions` and
`v1_tiny`, generated exactly as before.

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
from datasets.synthetic_lesions import generator_v2

# Split name -> id that goes into each example's random seed.
SPLIT_IDS = {'train': 0, 'validation': 1, 'test': 2}


@dataclasses.dataclass(eq=False)
class LesionsConfig(tfds.core.BuilderConfig):
  """A synthetic lesions variant.

  Attributes:
    spec: generation settings (image size, lesion counts, probabilities,
      styles): a `generator_v2.LesionsSpecV2` (version 2) or a
      `generator.LesionsSpec` (version 1).
    num_train: examples in the train split.
    num_validation: examples in the validation split.
    num_test: examples in the test split.
    seed: base seed; example `i` of split `s` is generated from
      `(seed, SPLIT_IDS[s], i)`.
  """
  spec: generator_v2.LesionsSpecV2 | generator.LesionsSpec = (
      dataclasses.field(default_factory=generator_v2.LesionsSpecV2))
  num_train: int = 10_000
  num_validation: int = 1_000
  num_test: int = 1_000
  seed: int = 0


def generate_example(spec, seed: int, split_id: int, index: int) -> dict:
  """The example of `spec`'s version (v2 or v1 generator)."""
  if isinstance(spec, generator_v2.LesionsSpecV2):
    return generator_v2.generate_example(spec, seed, split_id, index)
  return generator.generate_example(spec, seed, split_id, index)


def _generalisation_config(name: str, description: str, spec,
                           seed: int) -> LesionsConfig:
  """A config that tests generalisation: fewer examples per split."""
  return LesionsConfig(name=name, description=description, spec=spec,
                       num_train=2_000, num_validation=500, num_test=1_000,
                       seed=seed)


class Builder(tfds.core.GeneratorBasedBuilder):
  """Synthetic lesions with multi-scale, exactly enumerable ambiguity."""

  VERSION = tfds.core.Version('2.0.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release.',
      '2.0.0': ('Version 2 of the data (generator_v2) is `default`, '
                '`few_lesions`, `many_lesions`, `tiny`; the 1.0.0 configs '
                'are renamed `v1`, `v1_many_lesions`, `v1_tiny` (same data).'),
  }
  BUILDER_CONFIGS = [
      LesionsConfig(
          name='default',
          description=('v2, 64x64, 2-4 lesions; outlines and probabilities '
                       'readable from the image.'),
          spec=generator_v2.LesionsSpecV2(min_lesions=2, max_lesions=4),
          seed=10),
      _generalisation_config(
          'few_lesions', 'v2, 64x64, 1 lesion per image (generalisation).',
          generator_v2.LesionsSpecV2(min_lesions=1, max_lesions=1), seed=11),
      _generalisation_config(
          'many_lesions', ('v2, 64x64, 5-6 lesions per image, lesions as in '
                           '`default` (generalisation).'),
          generator_v2.LesionsSpecV2(min_lesions=5, max_lesions=6), seed=12),
      LesionsConfig(
          name='tiny',
          description='v2, 32x32, 1-2 lesions, a handful of examples (tests).',
          spec=generator_v2.LesionsSpecV2(
              image_size=32, min_lesions=1, max_lesions=2,
              radius_range=(0.12, 0.15), style_offsets=(-1.5, 0.0, 1.5)),
          num_train=16, num_validation=8, num_test=8, seed=13),
      LesionsConfig(
          name='v1',
          description='v1 (the first study, results/v1/), 64x64, 1-3 lesions.',
          spec=generator.LesionsSpec()),
      _generalisation_config(
          'v1_many_lesions', ('v1, 64x64, 4-6 lesions per image, lesions as '
                              'in `v1`: tests generalisation to more '
                              'lesions.'),
          generator.LesionsSpec(min_lesions=4, max_lesions=6), seed=1),
      LesionsConfig(
          name='v1_tiny',
          description='v1, 32x32, 1-2 lesions, a handful of examples (tests).',
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
    num_styles = len(spec.style_probs)
    tensor = tfds.features.Tensor
    features = {
        'image': tfds.features.Image(shape=(size, size, 1), dtype=np.uint8),
        'graders': tensor(shape=(spec.num_graders, size, size),
                          dtype=np.uint8),
        'lesion_probs': tensor(shape=(None,), dtype=np.float32),
        'style_scales': tensor(shape=(num_styles,), dtype=np.float32),
        'style_probs': tensor(shape=(num_styles,), dtype=np.float32),
        'index': tfds.features.Scalar(dtype=np.int64),
    }
    if isinstance(spec, generator_v2.LesionsSpecV2):
      features['lesion_labels'] = tensor(shape=(size, size), dtype=np.uint8)
    else:
      features.update(
          lesion_centres=tensor(shape=(None, 2), dtype=np.float32),
          lesion_radii=tensor(shape=(None,), dtype=np.float32),
          lesion_harmonics=tensor(shape=(None, generator.NUM_HARMONICS, 2),
                                  dtype=np.float32))
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
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
      example = generate_example(config.spec, config.seed, SPLIT_IDS[split],
                                 index)
      example['image'] = image_codec.encode_png(example['image'])
      example['index'] = index
      yield index, example
