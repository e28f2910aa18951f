"""Tests for the SNEMI3D TFDS builder on a 4-slice 64x64 stack."""
import pathlib

import numpy as np
import pytest
import tifffile

from datasets import raw_checks
from datasets.snemi3d import snemi3d_dataset_builder as snemi3d
from tests import fixtures

# The paper's split, scaled to the 4-slice fixture: 2 / 1 / 1 slices.
_TINY = next(c for c in snemi3d.Builder.BUILDER_CONFIGS if c.name == 'tiny')


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  raw = tmp_path_factory.mktemp('snemi_raw')
  em, labels = fixtures.write_snemi3d(raw)
  builder = fixtures.build(snemi3d.Builder, raw,
                           tmp_path_factory.mktemp('data'), config=_TINY)
  return builder, em, labels


@pytest.fixture
def raw(tmp_path):
  fixtures.write_snemi3d(tmp_path / 'raw')
  return tmp_path / 'raw'


def _all_examples(builder, split):
  source = builder.as_data_source(split)
  return {ex['key'].decode(): ex
          for ex in (source[i] for i in range(len(source)))}


def test_counts_per_split(built):
  builder, _, _ = built
  # 4 crops of 32x32 per 64x64 slice.
  assert [builder.info.splits[s].num_examples for s in snemi3d.SPLITS] == [
      8, 4, 4]


def test_crops_match_the_stack(built):
  builder, em, labels = built
  for split, z_values in (('train', [0, 1]), ('validation', [2]),
                          ('test', [3])):
    examples = _all_examples(builder, split)
    assert sorted(examples) == [f'z{z:03d}_y{r:04d}_x{c:04d}' for z in z_values
                                for r in (0, 32) for c in (0, 32)]
    for key, ex in examples.items():
      z, row, col = (int(part[1:]) for part in key.split('_'))
      window = (z, slice(row, row + 32), slice(col, col + 32))
      assert ex['z'] == z
      assert ex['image'].shape == (32, 32, 1) and ex['image'].dtype == np.uint8
      np.testing.assert_array_equal(ex['image'][..., 0], em[window])
      assert ex['instances'].shape == (32, 32)
      assert ex['instances'].dtype == np.int32
      np.testing.assert_array_equal(ex['instances'], labels[window])


def test_instance_ids_are_kept(built):
  builder, _, _ = built
  ids = set(np.unique(_all_examples(builder, 'test')['z003_y0000_x0000'][
      'instances']))
  assert {0, 123456} <= ids  # Membrane and the merged neurite, unchanged.


def test_default_config_is_the_papers(tmp_path):
  builder = snemi3d.Builder(data_dir=str(tmp_path))
  config = builder.builder_config
  assert config.name == 'paper' and config.crop_size == 256
  assert config.slice_ranges == {
      'train': (0, 80), 'validation': (80, 90), 'test': (90, 100)}
  assert builder.info.features['image'].shape == (256, 256, 1)
  assert builder.info.features['instances'].shape == (256, 256)


@pytest.mark.parametrize('ranges, match', [
    (((0, 2), (1, 3), (3, 4)), 'overlap'),
    (((0, 2), (2, 2), (3, 4)), 'start < stop'),
])
def test_config_rejects_bad_slice_ranges(ranges, match):
  with pytest.raises(ValueError, match=match):
    snemi3d.Snemi3dConfig(name='bad', train_slices=ranges[0],
                          validation_slices=ranges[1], test_slices=ranges[2])


def _build_fails(raw_dir, data_dir, match, config=_TINY):
  with pytest.raises(raw_checks.RawDataError, match=match):
    fixtures.build(snemi3d.Builder, raw_dir, data_dir, config=config)
  assert not fixtures.prepared_files(data_dir, 'snemi3d')


def test_missing_manual_dir(tmp_path):
  _build_fails(tmp_path / 'nowhere', tmp_path / 'data', 'nowhere')


def test_missing_labels_file(raw, tmp_path):
  (raw / 'train-labels.tif').unlink()
  _build_fails(raw, tmp_path / 'data', r'train-labels.tif: missing file')


def test_corrupt_tiff_then_fixed_build_succeeds(raw, tmp_path):
  path = raw / 'train-input.tif'
  good_bytes = path.read_bytes()
  path.write_bytes(good_bytes[:100])
  _build_fails(raw, tmp_path / 'data', r'train-input.tif: not a readable TIFF')
  path.write_bytes(good_bytes)
  builder = fixtures.build(snemi3d.Builder, raw, tmp_path / 'data',
                           config=_TINY)
  assert builder.info.splits['train'].num_examples == 8


def test_labels_shape_differs_from_input(raw, tmp_path):
  tifffile.imwrite(raw / 'train-labels.tif', np.zeros((4, 64, 32), np.uint32),
                   photometric='minisblack')
  _build_fails(raw, tmp_path / 'data',
               r'train-labels.tif: label stack .* has shape \(4, 64, 32\)')


def test_negative_label_ids(raw, tmp_path):
  labels = np.zeros((4, 64, 64), np.int16)
  labels[1, 5, 5] = -3
  tifffile.imwrite(raw / 'train-labels.tif', labels, photometric='minisblack')
  _build_fails(raw, tmp_path / 'data', r'train-labels.tif: neurite ids .*-3')


def test_input_not_uint8(raw, tmp_path):
  tifffile.imwrite(raw / 'train-input.tif', np.zeros((4, 64, 64), np.uint16),
                   photometric='minisblack')
  _build_fails(raw, tmp_path / 'data', r'train-input.tif: expected a uint8')


def test_stack_too_small_for_the_paper_config(raw, tmp_path):
  _build_fails(raw, tmp_path / 'data',
               r"train-input.tif: has 4 slices, config 'paper' reads slices "
               r'up to 99', config='paper')


def test_crop_size_must_divide_the_slices(raw, tmp_path):
  config = snemi3d.Snemi3dConfig(
      name='crop48', crop_size=48, train_slices=(0, 2),
      validation_slices=(2, 3), test_slices=(3, 4))
  _build_fails(raw, tmp_path / 'data', r'64x64 do not split into 48x48',
               config=config)


def test_committed_dummy_data_builds(tmp_path):
  dummy = pathlib.Path(snemi3d.__file__).parent / 'dummy_data'
  builder = fixtures.build(snemi3d.Builder, dummy, tmp_path / 'data',
                           config=_TINY)
  assert builder.info.splits['validation'].num_examples == 4
