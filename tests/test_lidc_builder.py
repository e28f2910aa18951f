"""Tests for the LIDC crops TFDS builder on a tiny fixture of the release."""
import pathlib
import shutil

import numpy as np
import pytest
import simple_parsing
from tensorflow_datasets.scripts.cli import build as tfds_build_cli

from datasets import image_codec
from datasets import raw_checks
from datasets.lidc_crops import lidc_crops_dataset_builder as lidc
from tests import fixtures

_SPLIT_DIRS = {'train': 'train', 'validation': 'val', 'test': 'test'}


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  raw = tmp_path_factory.mktemp('lidc_raw')
  written = fixtures.write_lidc(raw)
  builder = fixtures.build(lidc.Builder, raw, tmp_path_factory.mktemp('data'))
  return builder, written


@pytest.fixture
def raw(tmp_path):
  """A fresh fixture to break; returns its root."""
  fixtures.write_lidc(tmp_path / 'raw')
  return tmp_path / 'raw'


def _all_examples(builder, split):
  """{key: example}; the data source returns Text features as bytes."""
  source = builder.as_data_source(split)
  examples = [source[i] for i in range(len(source))]
  for ex in examples:
    assert isinstance(ex['key'], bytes) and isinstance(ex['patient_id'], bytes)
  return {ex['key'].decode(): ex for ex in examples}


def test_counts_per_split(built):
  builder, written = built
  for split, raw_dir in _SPLIT_DIRS.items():
    assert builder.info.splits[split].num_examples == len(written[raw_dir])
  assert [builder.info.splits[s].num_examples for s in _SPLIT_DIRS] == [3, 1, 2]


def test_examples_match_raw_files(built):
  builder, written = built
  for split, raw_dir in _SPLIT_DIRS.items():
    examples = _all_examples(builder, split)
    assert sorted(examples) == sorted(written[raw_dir])
    for key, example in examples.items():
      expected = written[raw_dir][key]
      assert example['image'].shape == (180, 180, 1)
      assert example['image'].dtype == np.uint8
      np.testing.assert_array_equal(example['image'][..., 0], expected['image'])
      assert example['graders'].shape == (4, 180, 180)
      assert example['graders'].dtype == np.uint8
      assert set(np.unique(example['graders'])) <= {0, 1}
      np.testing.assert_array_equal(example['graders'], expected['graders'])
      assert example['patient_id'].decode() == key.split('/')[0]


def test_subset_b_and_both_grader_numberings(built):
  builder, _ = built
  subset_b = {key: bool(ex['subset_b'])
              for split in _SPLIT_DIRS
              for key, ex in _all_examples(builder, split).items()}
  assert subset_b == {
      'LIDC-IDRI-0001/z-105.0_c0': True,   # graders _l0.._l3
      'LIDC-IDRI-0001/z-105.0_c1': False,
      'LIDC-IDRI-0002/z--12.5_c0': True,   # graders _l1.._l4
      'LIDC-IDRI-0003/z-40.0_c0': False,   # nobody marked a lesion
      'LIDC-IDRI-0004/z-7.0_c0': True,
      'LIDC-IDRI-0004/z-7.0_c1': False,
  }


def test_grader_order_follows_grader_ids(built):
  # Grader g's lesion is 20 + 5 g rows tall in the fixture, for both numberings.
  builder, _ = built
  examples = _all_examples(builder, 'train')
  for key in ('LIDC-IDRI-0001/z-105.0_c0', 'LIDC-IDRI-0002/z--12.5_c0'):
    rows = examples[key]['graders'].any(axis=2).sum(axis=1)
    np.testing.assert_array_equal(rows, [20, 25, 30, 35])


def _build_fails(raw_dir, data_dir, match):
  with pytest.raises(raw_checks.RawDataError, match=match):
    fixtures.build(lidc.Builder, raw_dir, data_dir)
  assert not fixtures.prepared_files(data_dir, 'lidc_crops')


def test_missing_manual_dir(tmp_path):
  _build_fails(tmp_path / 'nowhere', tmp_path / 'data', 'nowhere')


def test_missing_split_directory(raw, tmp_path):
  shutil.rmtree(raw / 'val')
  _build_fails(raw, tmp_path / 'data', r'val: missing directory')


def test_missing_grader_mask(raw, tmp_path):
  (raw / 'test/gt/LIDC-IDRI-0004/z-7.0_c1_l2.png').unlink()
  _build_fails(raw, tmp_path / 'data',
               r'z-7.0_c1.png: expected 4 grader masks .* found '
               r'z-7.0_c1_l0.png, z-7.0_c1_l1.png, z-7.0_c1_l3.png')


def test_extra_grader_mask(raw, tmp_path):
  shutil.copy(raw / 'val/gt/LIDC-IDRI-0003/z-40.0_c0_l1.png',
              raw / 'val/gt/LIDC-IDRI-0003/z-40.0_c0_l0.png')
  _build_fails(raw, tmp_path / 'data', r'z-40.0_c0.png: expected 4 grader')


def test_mixed_grader_numbering(raw, tmp_path):
  gt = raw / 'train/gt/LIDC-IDRI-0001'
  (gt / 'z-105.0_c1_l3.png').rename(gt / 'z-105.0_c1_l4.png')
  _build_fails(raw, tmp_path / 'data', r'z-105.0_c1.png: expected 4 grader')


def test_mask_without_image(raw, tmp_path):
  (raw / 'test/images/LIDC-IDRI-0004/z-7.0_c0.png').unlink()
  _build_fails(raw, tmp_path / 'data', r'masks for z-7.0_c0 have no image')


def test_patient_with_masks_but_no_images(raw, tmp_path):
  shutil.rmtree(raw / 'train/images/LIDC-IDRI-0002')
  _build_fails(raw, tmp_path / 'data',
               r'gt/LIDC-IDRI-0002: grader masks of a patient with no images')


def test_corrupt_png_then_fixed_build_succeeds(raw, tmp_path):
  # The test split is written last, so train and validation were already on
  # disk (in TFDS's temporary directory) when the build fails.
  image_path = raw / 'test/images/LIDC-IDRI-0004/z-7.0_c1.png'
  good_bytes = image_path.read_bytes()
  image_path.write_bytes(good_bytes[:40])
  _build_fails(raw, tmp_path / 'data', r'z-7.0_c1.png: not a readable PNG')
  image_path.write_bytes(good_bytes)
  builder = fixtures.build(lidc.Builder, raw, tmp_path / 'data')
  assert builder.info.splits['test'].num_examples == 2


def test_mask_size_differs_from_image(raw, tmp_path):
  mask_path = raw / 'train/gt/LIDC-IDRI-0002/z--12.5_c0_l3.png'
  mask_path.write_bytes(image_codec.encode_png(np.zeros((90, 90), np.uint8)))
  _build_fails(raw, tmp_path / 'data',
               r'z--12.5_c0_l3.png: mask .* has shape \(90, 90\)')


def test_mask_values_other_than_0_and_255(raw, tmp_path):
  mask = np.zeros((180, 180), np.uint8)
  mask[5:9, 5:9] = 1
  mask_path = raw / 'val/gt/LIDC-IDRI-0003/z-40.0_c0_l2.png'
  mask_path.write_bytes(image_codec.encode_png(mask))
  _build_fails(raw, tmp_path / 'data',
               r'z-40.0_c0_l2.png: grader mask holds values outside '
               r'\[0, 255\]: 1')


def test_image_of_wrong_size(raw, tmp_path):
  image_path = raw / 'train/images/LIDC-IDRI-0001/z-105.0_c0.png'
  image_path.write_bytes(image_codec.encode_png(np.zeros((128, 128), np.uint8)))
  _build_fails(raw, tmp_path / 'data',
               r'z-105.0_c0.png: CT crop has shape \(128, 128\)')


def test_committed_dummy_data_builds(tmp_path):
  dummy = pathlib.Path(lidc.__file__).parent / 'dummy_data'
  builder = fixtures.build(lidc.Builder, dummy, tmp_path / 'data')
  assert [builder.info.splits[s].num_examples for s in _SPLIT_DIRS] == [3, 1, 2]


def test_tfds_build_command_with_builder_path(tmp_path):
  # `tfds build datasets/lidc_crops --manual_dir=...`: the `tfds` script itself
  # needs TensorFlow to start, so this drives its `build` command directly. It
  # imports the builder file as `lidc_crops.lidc_crops_dataset_builder` while
  # `datasets` is TFDS's HuggingFace stand-in.
  fixtures.write_lidc(tmp_path / 'raw')
  args = simple_parsing.parse(tfds_build_cli.Args, args=[
      str(pathlib.Path(lidc.__file__).parent),
      f'--manual_dir={tmp_path / "raw"}', f'--data_dir={tmp_path / "data"}',
      '--file_format=array_record'])
  args.execute()
  assert sorted(p.name for p in (tmp_path / 'data/lidc_crops/1.0.0').glob(
      '*.array_record*')) == [
          f'lidc_crops-{split}.array_record-00000-of-00001'
          for split in ('test', 'train', 'validation')]
