"""LIDC-IDRI 128x128 lesion crops of the Probabilistic U-Net PyTorch release.

The release PHiSeg, SSN, MoSE, PixelSeg and CCDM ("LIDC v1") use; its
formats are described in `raw_release.py`. Configs:

* `pickle` (default): the `*.pickle` file(s) in manual_dir, split by
  `series_uid` at random with a fixed seed (60 / 20 / 20 % of the series).
* `hdf5`: PHiSeg's `data_lidc.hdf5`, its three groups pooled and split by
  uid in the same way.
* `hdf5_groups`: PHiSeg's `data_lidc.hdf5` with its own `train` / `val` /
  `test` groups as the splits (the split of a published number, if its
  authors share the file; PHiSeg drew it with an unseeded `train_test_split`).

The split (source files, seed, fractions and the series of every split) is
recorded in the data set's `metadata.json` (`builder.info.metadata`).
Examples: `image` float32 `[128, 128, 1]` in [0, 1] (PHiSeg's image - 0.5
is undone), `graders` uint8 `[4, 128, 128]`, `subset_b` (all 4 graders
marked a lesion), `series_uid`, `key` (the pickle key, or `<group>/<index>`),
stored in the raw order (pickle order; HDF5 index order within a group).
"""
import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from . import raw_release

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Either the pickle of the LIDC-IDRI 128x128 crops linked in the README of
https://github.com/stefanknegt/Probabilistic-Unet-Pytorch (data_lidc.pickle,
or several *.pickle parts) for the `pickle` config, or PHiSeg's converted
file data_lidc.hdf5 (made from that pickle by data/lidc_data_loader.py of
https://github.com/baumgach/PHiSeg-code) for the `hdf5` and `hdf5_groups`
configs. Put the file(s) directly in manual_dir.
"""


@dataclasses.dataclass(eq=False)
class LidcV1Config(tfds.core.BuilderConfig):
  """Where the examples come from and how they are split.

  Attributes:
    source: 'pickle' or 'hdf5' (the raw format read from manual_dir).
    split: 'series' (random, by series uid, seeded) or 'hdf5_groups' (the
      HDF5 file's own groups; source must be 'hdf5').
    split_seed: seed of the series permutation (split 'series').
    split_fractions: (train, validation, test) fractions of the series.
  """
  source: str = 'pickle'
  split: str = 'series'
  split_seed: int = 0
  split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)


def _split_metadata(config: LidcV1Config, files, series_per_split):
  return {'source': config.source, 'files': [p.name for p in files],
          'split': config.split, 'split_seed': config.split_seed,
          'split_fractions': list(config.split_fractions),
          'series_per_split': series_per_split}


class Builder(tfds.core.GeneratorBasedBuilder):
  """LIDC-IDRI 128x128 crops (LIDC v1) with the masks of 4 graders."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Pickle or PHiSeg HDF5, read from manual_dir.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
      LidcV1Config(name='pickle', description=(
          'The pickle(s), split by series_uid 60/20/20, seed 0.')),
      LidcV1Config(name='hdf5', source='hdf5', description=(
          "PHiSeg's HDF5, groups pooled, split by uid 60/20/20, seed 0.")),
      LidcV1Config(name='hdf5_groups', source='hdf5', split='hdf5_groups',
                   description="PHiSeg's HDF5 with its own train/val/test."),
  ]
  DEFAULT_CONFIG_NAME = 'pickle'

  def _info(self) -> tfds.core.DatasetInfo:
    size = raw_release.IMAGE_SIZE
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            # CT crop in [0, 1], stored as floats (the release's values).
            'image': tfds.features.Tensor(shape=(size, size, 1),
                                          dtype=np.float32),
            # [G, H, W], 1 = lesion according to grader g.
            'graders': tfds.features.Tensor(
                shape=(raw_release.NUM_GRADERS, size, size), dtype=np.uint8),
            'subset_b': np.bool_,  # All four graders marked a lesion.
            'series_uid': tfds.features.Text(),
            'key': tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(),
        # Stored in the raw order (pickle key order, HDF5 index order), so
        # "the first N test images" means what it means in the raw file.
        disable_shuffling=True,
        homepage='https://github.com/stefanknegt/Probabilistic-Unet-Pytorch',
    )

  def _split_generators(self, dl_manager):
    # pylint: disable-next=g-import-not-at-top
    from datasets import raw_checks
    config = self.builder_config
    if config.source not in ('pickle', 'hdf5') or config.split not in (
        'series', 'hdf5_groups') or (config.split == 'hdf5_groups'
                                     and config.source != 'hdf5'):
      raise ValueError(f'lidc_v1 config {config.name!r}: unsupported source '
                       f'{config.source!r} / split {config.split!r}')
    root = raw_checks.manual_dir(dl_manager)
    raw_checks.require_dir(root, 'LIDC v1 pickle or HDF5 file')
    # Everything is read and checked (pickle) or its layout checked (HDF5)
    # before the first example is written.
    if config.source == 'pickle':
      files = raw_release.pickle_files(root)
      slices = raw_release.read_pickles(files)
      series = raw_release.split_series([s.series_uid for s in slices],
                                        config.split_fractions,
                                        config.split_seed)
      split_of = {uid: split for split, uids in series.items() for uid in uids}
      per_split = {split: [s for s in slices if split_of[s.series_uid] == split]
                   for split in series}
      generators = {split: self._generate_examples(items)
                    for split, items in per_split.items()}
    else:
      path = raw_release.hdf5_file(root)
      files = [path]
      index = raw_release.hdf5_index(path)
      entries = [(group, i, uid) for group, uids in index.items()
                 for i, uid in enumerate(uids)]
      if config.split == 'hdf5_groups':
        wanted = {split: [(g, i) for g, i, _ in entries if g == group]
                  for split, group in raw_release.HDF5_GROUPS.items()}
        series = {split: sorted({index[g][i] for g, i in items})
                  for split, items in wanted.items()}
      else:
        series = raw_release.split_series([u for _, _, u in entries],
                                          config.split_fractions,
                                          config.split_seed)
        split_of = {uid: split for split, uids in series.items()
                    for uid in uids}
        wanted = {split: [(g, i) for g, i, u in entries
                          if split_of[u] == split] for split in series}
      for split, items in wanted.items():
        raw_checks.check_not_empty(items, split, str(path))
      generators = {split: self._generate_examples(
          raw_release.read_hdf5(path, items))
                    for split, items in wanted.items()}
    self.info.metadata.update(_split_metadata(config, files, series))
    return generators

  def _generate_examples(self, slices):
    """`slices`: `raw_release.Slice`s (a list, or read lazily from HDF5)."""
    for item in slices:
      yield item.key, _example(item)


def _example(item: raw_release.Slice) -> dict:
  graders = item.graders
  return {
      'image': item.image[..., None],
      'graders': graders,
      'subset_b': bool(graders.reshape(len(graders), -1).any(axis=1).all()),
      'series_uid': item.series_uid,
      'key': item.key,
  }
