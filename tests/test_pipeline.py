"""Tests of the grain input pipeline and the per-task preprocessing."""
import json
import pickle

import numpy as np
import pytest

from datasets import pipeline
from datasets import preprocess
from datasets import tfds_utils


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def _lesions_config(data_dir, **overrides):
  config = dict(name='synthetic_lesions', builder_config='tiny',
                data_dir=data_dir, manual_dir=None, train_split='train')
  config.update(overrides)
  return config


def _cells_config(data_dir, **overrides):
  config = dict(name='synthetic_cells', builder_config='tiny',
                data_dir=data_dir, manual_dir=None, train_split='train',
                num_instance_ids=5)
  config.update(overrides)
  return config


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same_batches(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _image_keys(records):
  return [np.asarray(r['image']).tobytes() for r in records]


def test_lesions_batches(data_dir):
  config = _lesions_config(data_dir)
  iterator = pipeline.make_train_iterator(config, batch_size=2, seed=0)
  source = tfds_utils.data_source('synthetic_lesions', 'train', data_dir,
                                  'tiny')
  records = {np.asarray(r['image']).tobytes(): r for r in source}
  assert pipeline.num_classes(config) == 2
  for batch in _take(iterator, 3):
    assert batch['image'].dtype == np.float32
    assert batch['image'].shape == (2, 32, 32, 1)
    assert 0 <= batch['image'].min() and batch['image'].max() <= 1
    assert batch['segmentation'].dtype == np.int32
    assert batch['segmentation'].shape == (2, 32, 32)
    assert set(np.unique(batch['segmentation'])) <= {0, 1}
    np.testing.assert_array_equal(batch['mask'], np.ones((2, 32, 32)))
    for image, segmentation in zip(batch['image'], batch['segmentation']):
      # The image is the stored one; the target is one of its graders.
      key = np.round(image * 255).astype(np.uint8).tobytes()
      assert any(np.array_equal(segmentation, g)
                 for g in records[key]['graders'])


def test_cells_batches_relabel_instances(data_dir):
  config = _cells_config(data_dir)
  assert pipeline.num_classes(config) == 6
  source = tfds_utils.data_source('synthetic_cells', 'train', data_dir, 'tiny')
  records = {np.asarray(r['image']).tobytes(): r for r in source}
  iterator = pipeline.make_train_iterator(config, batch_size=2, seed=1)
  labelings = {}
  for batch in _take(iterator, 16):  # Two epochs of 16 records.
    assert batch['image'].shape == (2, 32, 32, 1)
    assert batch['segmentation'].dtype == np.int32
    assert 0 <= batch['segmentation'].min()
    assert batch['segmentation'].max() < 6
    for image, segmentation in zip(batch['image'], batch['segmentation']):
      key = np.round(image * 255).astype(np.uint8).tobytes()
      instances = records[key]['instances']
      np.testing.assert_array_equal(segmentation == 0, instances == 0)
      for cell in np.unique(instances[instances > 0]):
        assert len(np.unique(segmentation[instances == cell])) == 1
      labelings.setdefault(key, []).append(segmentation)
  # Each record was drawn twice; the random relabelling differs per draw.
  assert all(len(v) == 2 for v in labelings.values())
  assert sum(not np.array_equal(*v) for v in labelings.values()) >= 12


def test_resume_from_state_gives_identical_batches(data_dir):
  config = _lesions_config(data_dir, read_threads=2, prefetch_buffer_size=8)
  iterator = pipeline.make_train_iterator(config, batch_size=3, seed=4)
  _take(iterator, 4)
  state = iterator.get_state()
  json.loads(state)  # A JSON document the trainer can store as is.
  # Crosses epoch boundaries (16 records, 5 batches per epoch).
  expected = _take(iterator, 12)
  resumed = pipeline.make_train_iterator(config, batch_size=3, seed=4)
  resumed.set_state(state)
  _assert_same_batches(expected, _take(resumed, 12))
  # The whole stream depends only on the arguments ...
  again = pipeline.make_train_iterator(config, batch_size=3, seed=4)
  _assert_same_batches(_take(again, 4) + expected,
                       _take(pipeline.make_train_iterator(
                           config, batch_size=3, seed=4), 16))
  # ... and the seed changes it.
  other = _take(pipeline.make_train_iterator(config, batch_size=3, seed=5), 1)
  assert not np.array_equal(other[0]['image'], expected[0]['image'])


def test_two_shards_are_disjoint_and_cover_the_data(data_dir):
  config = _lesions_config(data_dir)
  source = tfds_utils.data_source('synthetic_lesions', 'train', data_dir,
                                  'tiny')
  shard_images = []
  for shard_index in range(2):
    iterator = pipeline.make_train_iterator(config, batch_size=1, seed=0,
                                            shard_index=shard_index,
                                            shard_count=2)
    epoch = [np.round(b['image'][0] * 255).astype(np.uint8).tobytes()
             for b in _take(iterator, len(source) // 2)]
    assert len(set(epoch)) == len(epoch)  # An epoch sees each record once.
    shard_images.append(set(epoch))
  assert not shard_images[0] & shard_images[1]
  assert shard_images[0] | shard_images[1] == set(_image_keys(source))


def test_lesions_eval_examples(data_dir):
  config = _lesions_config(data_dir)
  examples = list(pipeline.eval_examples(config, 'test', limit=3))
  assert len(examples) == 3
  for example in examples:
    assert example['image'].dtype == np.float32
    assert example['image'].shape == (32, 32, 1)
    assert example['graders'].dtype == np.int32
    assert example['graders'].shape == (4, 32, 32)
    assert example['modes'].dtype == np.int32
    assert example['modes'].shape[1:] == (32, 32)
    assert example['mode_probs'].dtype == np.float64
    assert abs(example['mode_probs'].sum() - 1) < 1e-12
    assert example['mask'].shape == (32, 32)
    modes = {m.tobytes() for m in example['modes']}
    assert all(g.tobytes() in modes for g in example['graders'])
  assert len(list(pipeline.eval_examples(config, 'test'))) == 8


def test_cells_eval_examples(data_dir):
  example = next(pipeline.eval_examples(_cells_config(data_dir), 'validation'))
  assert example['instances'].dtype == np.int32
  assert example['instances'].shape == (32, 32)
  assert example['image'].shape == (32, 32, 1)
  assert example['mask'].dtype == np.float32


def test_bad_configs_raise(data_dir):
  with pytest.raises(ValueError, match='data_config.name'):
    pipeline.num_classes({'name': 'nope'})
  with pytest.raises(ValueError, match='num_instance_ids'):
    pipeline.make_train_iterator(_cells_config(data_dir, num_instance_ids=None),
                                 batch_size=1, seed=0)
  with pytest.raises(ValueError, match='image_size'):
    next(pipeline.eval_examples(_lesions_config(data_dir, image_size=64),
                                'test'))
  with pytest.raises(ValueError, match='shard_index'):
    pipeline.make_train_iterator(_lesions_config(data_dir), batch_size=1,
                                 seed=0, shard_index=2, shard_count=2)


def test_cityscapes_segmentation_assigns_one_class_per_car():
  rng = np.random.default_rng(0)
  train_ids = rng.integers(0, 19, size=(16, 24)).astype(np.uint8)
  train_ids[:2] = 255
  car_instances = np.zeros((16, 24), np.int32)
  for car in range(1, 7):
    car_instances[2 + 2 * car:4 + 2 * car, 3:9] = car
  train_ids[car_instances > 0] = 13
  segmentation, mask = preprocess.cityscapes_segmentation(
      train_ids, car_instances, num_car_ids=3, rng=rng)
  assert segmentation.dtype == np.int32 and mask.dtype == np.float32
  np.testing.assert_array_equal(mask, train_ids != 255)
  assert not segmentation[:2].any()
  not_car = (car_instances == 0) & (train_ids != 255)
  np.testing.assert_array_equal(segmentation[not_car], train_ids[not_car])
  classes = set()
  for car in range(1, 7):
    values = np.unique(segmentation[car_instances == car])
    assert len(values) == 1 and values[0] in (13, 19, 20)
    classes.add(int(values[0]))
  assert len(classes) > 1
  assert pipeline.num_classes({'name': 'cityscapes_cars',
                               'num_car_ids': 3}) == 21


def test_lidc_eval_crop_and_resize():
  record = {
      # uint8, as the builder stores the PNG crops.
      'image': (np.arange(180 * 180).reshape(180, 180, 1) % 251).astype(
          np.uint8),
      'graders': np.zeros((4, 180, 180), np.uint8),
      'subset_b': np.bool_(True), 'patient_id': b'LIDC-0001',
  }
  record['graders'][2, 26, 26] = 1
  record['graders'][2, 25, 25] = 1  # Outside the centre crop.
  example = preprocess.lidc_eval_example(record)
  assert example['image'].shape == (128, 128, 1)
  assert example['image'][0, 0, 0] == pytest.approx(
      record['image'][26, 26, 0] / 255)
  assert example['graders'].shape == (4, 128, 128)
  assert example['graders'].sum() == 1 and example['graders'][2, 0, 0] == 1
  assert example['patient_id'] == 'LIDC-0001' and example['subset_b']
  resized = preprocess.resize_record(
      {'image': np.zeros((8, 16, 3), np.uint8),
       'train_ids': np.full((8, 16), 7, np.uint8),
       'car_instances': np.ones((8, 16), np.int32)},
      (4, 8), ('train_ids', 'car_instances'))
  assert resized['image'].shape == (4, 8, 3)
  assert resized['train_ids'].dtype == np.uint8
  assert (resized['train_ids'] == 7).all()
  assert resized['car_instances'].shape == (4, 8)


def test_train_transforms_on_stand_in_records_and_pickling():
  rng = np.random.default_rng(0)
  car_instances = np.zeros((8, 16), np.int32)
  car_instances[2:6, 2:6], car_instances[2:6, 9:14] = 1, 2
  record = {'image': rng.integers(0, 256, (8, 16, 3)).astype(np.uint8),
            'train_ids': np.where(car_instances > 0, 13, 7).astype(np.uint8),
            'car_instances': car_instances}
  operations = pipeline._TASKS['cityscapes_cars'].train_operations(
      {'num_car_ids': 2, 'image_size': (4, 8)})
  resize, relabel = pickle.loads(pickle.dumps(operations))
  example = relabel.random_map(resize.map(record), np.random.default_rng(1))
  assert example['image'].shape == (4, 8, 3)
  assert example['image'].dtype == np.float32
  assert example['segmentation'].shape == (4, 8)
  assert set(np.unique(example['segmentation'])) <= {7, 13, 19}
  np.testing.assert_array_equal(example['mask'], np.ones((4, 8)))
  cells = pickle.loads(pickle.dumps(preprocess.RelabelInstances(3)))
  instances = np.arange(12, dtype=np.int32).reshape(3, 4) % 5
  example = cells.random_map({'image': np.zeros((3, 4, 1), np.uint8),
                              'instances': instances},
                             np.random.default_rng(2))
  np.testing.assert_array_equal(example['segmentation'] == 0, instances == 0)
  assert example['segmentation'].max() <= 3
