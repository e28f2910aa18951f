"""Tests for the Cityscapes cars TFDS builder on three tiny cities."""
import pathlib
import shutil

import numpy as np
import pytest

from datasets import image_codec
from datasets import raw_checks
from datasets.cityscapes_cars import cityscapes_cars_dataset_builder as cs
from tests import fixtures

# Halves the 16x32 fixture; of the paper's validation cities it holds ulm.
_TINY = next(c for c in cs.Builder.BUILDER_CONFIGS if c.name == 'tiny')
# The train ids of the labelIds the fixture uses, written out by hand.
_FIXTURE_TRAIN_IDS = {0: 255, 7: 0, 23: 10, 24: 11, 26: 13, 33: 18, 255: 255}


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  raw = tmp_path_factory.mktemp('cityscapes_raw')
  written = fixtures.write_cityscapes(raw)
  builder = fixtures.build(cs.Builder, raw, tmp_path_factory.mktemp('data'),
                           config=_TINY)
  return builder, written


@pytest.fixture
def raw(tmp_path):
  fixtures.write_cityscapes(tmp_path / 'raw')
  return tmp_path / 'raw'


def _all_examples(builder, split):
  source = builder.as_data_source(split)
  return {ex['key'].decode(): ex
          for ex in (source[i] for i in range(len(source)))}


def test_splits_hold_out_validation_cities(built):
  builder, _ = built
  cities = {split: sorted({ex['city'].decode()
                           for ex in _all_examples(builder, split).values()})
            for split in ('train', 'validation', 'test')}
  assert cities == {'train': ['aachen'], 'validation': ['ulm'],
                    'test': ['frankfurt']}
  assert [builder.info.splits[s].num_examples
          for s in ('train', 'validation', 'test')] == [2, 1, 1]


def test_examples_are_resized_and_mapped(built):
  builder, written = built
  for split, official in (('train', 'train'), ('validation', 'train'),
                          ('test', 'val')):
    for key, ex in _all_examples(builder, split).items():
      raw_frame = written[official][key]
      assert key.startswith(ex['city'].decode() + '_')
      assert ex['image'].shape == (8, 16, 3) and ex['image'].dtype == np.uint8
      assert ex['train_ids'].shape == (8, 16)
      assert ex['train_ids'].dtype == np.uint8
      assert ex['car_instances'].shape == (8, 16)
      assert ex['car_instances'].dtype == np.int32
      # 2x nearest neighbour keeps the odd rows and columns.
      kept_label_ids = raw_frame['label_ids'][1::2, 1::2]
      expected = np.vectorize(_FIXTURE_TRAIN_IDS.get)(kept_label_ids)
      np.testing.assert_array_equal(ex['train_ids'], expected)
      np.testing.assert_array_equal(
          ex['image'], cs.resize_image(raw_frame['image'], 8, 16))


def test_resize_image_is_bilinear_not_nearest():
  # A ramp of 8 per column: output column j covers input columns 2j, 2j + 1,
  # whose centre has value 16 j + 4 (nearest neighbour would give 16 j + 8).
  ramp = np.broadcast_to((8 * np.arange(32)).astype(np.uint8)[None, :, None],
                         (16, 32, 3)).copy()
  resized = cs.resize_image(ramp, 8, 16)
  assert resized.shape == (8, 16, 3)
  np.testing.assert_allclose(resized[:, 1:-1], np.broadcast_to(
      (16 * np.arange(1, 15) + 4)[None, :, None], (8, 14, 3)), atol=1)


def test_ignore_pixels(built):
  builder, _ = built
  ex = _all_examples(builder, 'test')[fixtures.cityscapes_stem('frankfurt', 3)]
  # labelId 255 (license plate) at raw (13, 3), unlabeled (0) at raw (15, 9).
  assert ex['train_ids'][6, 1] == 255 and ex['train_ids'][7, 4] == 255
  assert set(np.unique(ex['train_ids'])) == {0, 10, 11, 13, 18, 255}


def test_car_instances_after_resizing(built):
  builder, _ = built
  for split in ('train', 'validation', 'test'):
    for ex in _all_examples(builder, split).values():
      # The 1-pixel third car falls between the kept pixels.
      assert set(np.unique(ex['car_instances'])) == {0, 1, 2}
      np.testing.assert_array_equal(ex['car_instances'] > 0,
                                    ex['train_ids'] == 13)
      assert np.all(ex['car_instances'][:2, :2] == 1)


def test_car_instances_numbers_cars_in_id_order():
  instance_ids = np.array([[0, 26005, 26002], [24000, 26, 26005],
                           [33, 27001, 7]], np.int32)
  np.testing.assert_array_equal(
      cs.car_instances(instance_ids),
      [[0, 2, 1], [0, 0, 2], [0, 0, 0]])  # Car group 26 and truck: not cars.


def test_train_ids_table():
  np.testing.assert_array_equal(
      cs.train_ids(np.arange(34, dtype=np.uint8)),
      [255] * 7 + [0, 1, 255, 255, 2, 3, 4, 255, 255, 255, 5, 255, 6, 7, 8, 9,
                   10, 11, 12, 13, 14, 15, 255, 255, 16, 17, 18])
  assert cs.train_ids(np.array([255], np.uint8))[0] == 255
  assert len(set(cs.LABEL_ID_TO_TRAIN_ID.values())) == cs.NUM_TRAIN_CLASSES


def test_default_config_is_the_papers(tmp_path):
  builder = cs.Builder(data_dir=str(tmp_path))
  assert builder.builder_config.name == 'paper'
  assert builder.info.features['image'].shape == (512, 1024, 3)
  assert builder.info.features['train_ids'].shape == (512, 1024)
  assert builder.builder_config.validation_cities == (
      'darmstadt', 'moenchengladbach', 'ulm')


def _build_fails(raw_dir, data_dir, match):
  with pytest.raises(raw_checks.RawDataError, match=match):
    fixtures.build(cs.Builder, raw_dir, data_dir, config=_TINY)
  assert not fixtures.prepared_files(data_dir, 'cityscapes_cars')


def _gt(raw_dir, split, city, index, kind):
  stem = fixtures.cityscapes_stem(city, index)
  return raw_dir / 'gtFine' / split / city / f'{stem}_gtFine_{kind}.png'


def test_missing_manual_dir(tmp_path):
  _build_fails(tmp_path / 'nowhere', tmp_path / 'data', 'nowhere')


def test_missing_official_val(raw, tmp_path):
  shutil.rmtree(raw / 'gtFine' / 'val')
  _build_fails(raw, tmp_path / 'data', r'gtFine/val: missing directory')


def test_missing_instance_file(raw, tmp_path):
  _gt(raw, 'train', 'aachen', 1, 'instanceIds').unlink()
  _build_fails(raw, tmp_path / 'data',
               r'aachen_000001_000019_gtFine_instanceIds.png: missing file')


def test_no_validation_city(raw, tmp_path):
  shutil.rmtree(raw / 'leftImg8bit' / 'train' / 'ulm')
  _build_fails(raw, tmp_path / 'data',
               r"leftImg8bit/train: validation cities \['ulm'\] of config "
               r"'tiny' have no images there")


def test_corrupt_png_then_fixed_build_succeeds(raw, tmp_path):
  path = _gt(raw, 'val', 'frankfurt', 3, 'labelIds')
  good_bytes = path.read_bytes()
  path.write_bytes(b'not a png')
  _build_fails(raw, tmp_path / 'data',
               r'frankfurt_000003_000019_gtFine_labelIds.png: not a readable')
  path.write_bytes(good_bytes)
  builder = fixtures.build(cs.Builder, raw, tmp_path / 'data', config=_TINY)
  assert builder.info.splits['test'].num_examples == 1


def test_label_map_size_differs_from_image(raw, tmp_path):
  _gt(raw, 'train', 'ulm', 2, 'labelIds').write_bytes(
      image_codec.encode_png(np.full((8, 16), 7, np.uint8)))
  _build_fails(raw, tmp_path / 'data',
               r'ulm_000002_000019_gtFine_labelIds.png: label map .* has '
               r'shape \(8, 16\)')


def test_label_id_out_of_range(raw, tmp_path):
  path = _gt(raw, 'train', 'aachen', 0, 'labelIds')
  label_ids = image_codec.read_png(path).copy()
  label_ids[0, 0] = 34
  path.write_bytes(image_codec.encode_png(label_ids))
  _build_fails(raw, tmp_path / 'data',
               r'aachen_000000_000019_gtFine_labelIds.png: labelIds holds '
               r'values outside .*: 34')


@pytest.mark.parametrize('bad_id', [40001, 500])
def test_instance_id_out_of_range(raw, tmp_path, bad_id):
  path = _gt(raw, 'train', 'aachen', 0, 'instanceIds')
  instance_ids = image_codec.read_png(path).copy()
  instance_ids[0, 0] = bad_id
  path.write_bytes(image_codec.encode_png(instance_ids))
  _build_fails(raw, tmp_path / 'data',
               r'aachen_000000_000019_gtFine_instanceIds.png: instance ids .*'
               f'got {bad_id}')


def test_grayscale_image(raw, tmp_path):
  stem = fixtures.cityscapes_stem('aachen', 1)
  path = raw / 'leftImg8bit' / 'train' / 'aachen' / f'{stem}_leftImg8bit.png'
  path.write_bytes(image_codec.encode_png(np.zeros((16, 32), np.uint8)))
  _build_fails(raw, tmp_path / 'data', f'{stem}_leftImg8bit.png: expected an '
               '8-bit RGB image')


def test_committed_dummy_data_builds(tmp_path):
  dummy = pathlib.Path(cs.__file__).parent / 'dummy_data'
  builder = fixtures.build(cs.Builder, dummy, tmp_path / 'data', config=_TINY)
  assert builder.info.splits['train'].num_examples == 2
