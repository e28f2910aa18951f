"""Tests for the LIDC v1 (128x128 pickle / PHiSeg HDF5) TFDS builder."""
import json
import pathlib
import pickle

import numpy as np
import pytest

from datasets import raw_checks
from datasets import tfds_utils
from datasets.lidc_v1 import lidc_v1_dataset_builder as lidc_v1
from datasets.lidc_v1 import raw_release
from tests import fixtures

_SPLITS = ('train', 'validation', 'test')


def _examples(builder, split):
  source = builder.as_data_source(split)
  return {ex['key'].decode(): ex for ex in (source[i]
                                            for i in range(len(source)))}


@pytest.fixture(scope='module')
def pickle_build(tmp_path_factory):
  raw = tmp_path_factory.mktemp('lidc_v1_pickle')
  slices = fixtures.write_lidc_v1_pickle(raw)
  builder = fixtures.build(lidc_v1.Builder, raw,
                           tmp_path_factory.mktemp('data'), config='pickle')
  return builder, slices


def test_pickle_examples_match_and_split_by_series(pickle_build):
  builder, slices = pickle_build
  seen = {}
  for split in _SPLITS:
    for key, ex in _examples(builder, split).items():
      expected = slices[key]
      assert ex['image'].shape == (128, 128, 1)
      assert ex['image'].dtype == np.float32
      np.testing.assert_array_equal(ex['image'][..., 0], expected['image'])
      np.testing.assert_array_equal(ex['graders'], np.stack(expected['masks']))
      assert ex['series_uid'].decode() == expected['series_uid']
      assert bool(ex['subset_b']) == all(m.any() for m in expected['masks'])
      seen.setdefault(expected['series_uid'], set()).add(split)
  assert len(seen) == 5 and sorted(seen) == sorted(fixtures.LIDC_V1_LAYOUT)
  assert all(len(splits) == 1 for splits in seen.values())  # No leak.
  # 5 series at 60/20/20 -> 3/1/1 series.
  series_counts = {s: sum(1 for v in seen.values() if s in v) for s in _SPLITS}
  assert series_counts == {'train': 3, 'validation': 1, 'test': 1}
  assert sum(builder.info.splits[s].num_examples for s in _SPLITS) == 8


def test_split_is_seeded_and_recorded(pickle_build):
  builder, slices = pickle_build
  metadata = builder.info.metadata
  expected = raw_release.split_series(
      [v['series_uid'] for v in slices.values()], (0.6, 0.2, 0.2), seed=0)
  assert metadata['split_seed'] == 0 and metadata['source'] == 'pickle'
  assert metadata['files'] == ['data_lidc.pickle']
  assert metadata['series_per_split'] == expected
  recorded = json.loads(
      pathlib.Path(builder.data_dir, 'metadata.json').read_text())
  assert recorded['series_per_split'] == expected
  # Reloading the prepared data set brings the record back.
  reloaded = lidc_v1.Builder(data_dir=builder.data_dir_root, config='pickle',
                             file_format='array_record')
  assert reloaded.info.metadata['series_per_split'] == expected


def test_split_series_is_deterministic_and_depends_on_the_seed():
  uids = [f'uid{i}' for i in range(30)]
  first = raw_release.split_series(uids, (0.6, 0.2, 0.2), seed=0)
  assert first == raw_release.split_series(uids[::-1], (0.6, 0.2, 0.2), 0)
  assert [len(first[s]) for s in _SPLITS] == [18, 6, 6]
  assert sorted(sum(first.values(), [])) == sorted(uids)
  assert first != raw_release.split_series(uids, (0.6, 0.2, 0.2), seed=1)
  with pytest.raises(ValueError, match='split_fractions'):
    raw_release.split_series(uids, (0.6, 0.3, 0.2), seed=0)


def test_several_pickle_files_give_the_same_data_set(tmp_path, pickle_build):
  builder, _ = pickle_build
  fixtures.write_lidc_v1_pickle(tmp_path / 'raw', num_files=3)
  parts = fixtures.build(lidc_v1.Builder, tmp_path / 'raw', tmp_path / 'data',
                         config='pickle')
  assert parts.info.metadata['files'] == [
      'lidc_part0.pickle', 'lidc_part1.pickle', 'lidc_part2.pickle']
  for split in _SPLITS:
    assert sorted(_examples(parts, split)) == sorted(_examples(builder, split))


@pytest.mark.parametrize('labels_layout', ['phiseg', 'ccdm'])
def test_hdf5_groups_as_they_are(labels_layout, tmp_path):
  written = fixtures.write_lidc_v1_hdf5(tmp_path / 'raw', labels_layout)
  builder = fixtures.build(lidc_v1.Builder, tmp_path / 'raw',
                           tmp_path / 'data', config='hdf5_groups')
  groups = dict(zip(_SPLITS, ('train', 'val', 'test')))
  for split, group in groups.items():
    examples = _examples(builder, split)
    # Stored in the file's order: the first N test images are the file's.
    assert list(examples) == [k for k in written if k.startswith(group + '/')]
    for key, ex in examples.items():
      # PHiSeg stores image - 0.5 in float64; the builder adds 0.5 back.
      np.testing.assert_allclose(ex['image'][..., 0], written[key]['image'],
                                 atol=1e-7)
      np.testing.assert_array_equal(ex['graders'],
                                    np.stack(written[key]['masks']))
      assert ex['series_uid'].decode() == written[key]['uid']
  assert builder.info.metadata['split'] == 'hdf5_groups'


def test_hdf5_pooled_and_split_by_uid(tmp_path):
  written = fixtures.write_lidc_v1_hdf5(tmp_path / 'raw')
  builder = fixtures.build(lidc_v1.Builder, tmp_path / 'raw',
                           tmp_path / 'data', config='hdf5')
  series = builder.info.metadata['series_per_split']
  assert series == raw_release.split_series(
      [v['uid'] for v in written.values()], (0.6, 0.2, 0.2), seed=0)
  for split in _SPLITS:
    for key, ex in _examples(builder, split).items():
      assert written[key]['uid'] in series[split]
      assert ex['series_uid'].decode() == written[key]['uid']


def test_tfds_utils_command_builds_it(tmp_path, capsys):
  fixtures.write_lidc_v1_pickle(tmp_path / 'raw')
  tfds_utils.main(['lidc_v1', f'--manual_dir={tmp_path / "raw"}',
                   f'--data_dir={tmp_path / "data"}'])
  out = capsys.readouterr().out
  assert 'lidc_v1/pickle' in out and 'train:' in out


# --- Bad input: one RawDataError naming the file and key; nothing prepared.


def _build_fails(raw, data_dir, match, config='pickle'):
  with pytest.raises(raw_checks.RawDataError, match=match):
    fixtures.build(lidc_v1.Builder, raw, data_dir, config=config)
  assert not fixtures.prepared_files(data_dir, 'lidc_v1')


def _broken_pickle(tmp_path, edit):
  slices = fixtures.lidc_v1_slices()
  edit(slices['series3_slice1'])
  fixtures.write_lidc_v1_pickle(tmp_path / 'raw', slices)
  return tmp_path / 'raw'


def test_pickle_slice_without_masks(tmp_path):
  raw = _broken_pickle(tmp_path, lambda v: v.pop('masks'))
  _build_fails(raw, tmp_path / 'data',
               r"data_lidc.pickle: key 'series3_slice1': missing 'masks'")


def test_pickle_slice_with_three_masks(tmp_path):
  raw = _broken_pickle(tmp_path, lambda v: v['masks'].pop())
  _build_fails(raw, tmp_path / 'data',
               r"key 'series3_slice1': expected 4 masks of 128x128, got 3")


def test_pickle_image_of_wrong_size(tmp_path):
  raw = _broken_pickle(
      tmp_path, lambda v: v.update(image=np.zeros((180, 180), np.float32)))
  _build_fails(raw, tmp_path / 'data',
               r"key 'series3_slice1': image has shape \(180, 180\)")


def test_pickle_mask_values_outside_0_1(tmp_path):
  raw = _broken_pickle(tmp_path, lambda v: v['masks'][2].fill(255))
  _build_fails(raw, tmp_path / 'data',
               r"key 'series3_slice1': masks holds values outside \[0, 1\]")


def test_pickle_that_is_not_a_dict_and_not_a_pickle(tmp_path):
  (tmp_path / 'raw').mkdir()
  with open(tmp_path / 'raw' / 'data_lidc.pickle', 'wb') as f:
    pickle.dump([1, 2], f)
  _build_fails(tmp_path / 'raw', tmp_path / 'data',
               r'data_lidc.pickle: expected a dict keyed by slice, got list')
  (tmp_path / 'raw' / 'data_lidc.pickle').write_bytes(b'not a pickle')
  _build_fails(tmp_path / 'raw', tmp_path / 'data2',
               r'data_lidc.pickle: not a readable pickle')


def test_key_repeated_across_pickle_files(tmp_path):
  slices = fixtures.write_lidc_v1_pickle(tmp_path / 'raw', num_files=2)
  with open(tmp_path / 'raw' / 'zz.pickle', 'wb') as f:
    pickle.dump({'series0_slice0': slices['series0_slice0']}, f)
  _build_fails(tmp_path / 'raw', tmp_path / 'data',
               r"zz.pickle: key 'series0_slice0' is also in .*lidc_part0")


def test_no_raw_file(tmp_path):
  (tmp_path / 'raw').mkdir()
  (tmp_path / 'raw' / 'README').write_text('nothing here')
  _build_fails(tmp_path / 'raw', tmp_path / 'data', r'raw: no \*.pickle file')
  _build_fails(tmp_path / 'raw', tmp_path / 'data',
               r'raw: expected one \*.hdf5 file', config='hdf5_groups')


def test_pickle_config_on_an_hdf5_names_the_right_config(tmp_path):
  fixtures.write_lidc_v1_hdf5(tmp_path / 'raw')
  _build_fails(tmp_path / 'raw', tmp_path / 'data',
               r"no \*.pickle file .*found \['data_lidc.hdf5'\]: build the "
               r'config hdf5 or hdf5_groups')


def test_hdf5_without_a_group(tmp_path):
  import h5py  # pylint: disable=g-import-not-at-top
  fixtures.write_lidc_v1_hdf5(tmp_path / 'raw')
  with h5py.File(tmp_path / 'raw' / 'data_lidc.hdf5', 'a') as f:
    del f['val']
  _build_fails(tmp_path / 'raw', tmp_path / 'data',
               r"data_lidc.hdf5: missing group 'val'", config='hdf5_groups')


def test_hdf5_without_labels_or_with_wrong_shapes(tmp_path):
  import h5py  # pylint: disable=g-import-not-at-top
  fixtures.write_lidc_v1_hdf5(tmp_path / 'raw')
  path = tmp_path / 'raw' / 'data_lidc.hdf5'
  with h5py.File(path, 'a') as f:
    labels = f['test/labels'][()]
    del f['test/labels']
  _build_fails(tmp_path / 'raw', tmp_path / 'data',
               r'data_lidc.hdf5: missing dataset test/labels', config='hdf5')
  with h5py.File(path, 'a') as f:
    f['test'].create_dataset('labels', data=labels[..., :3])
  _build_fails(tmp_path / 'raw', tmp_path / 'data2',
               r'data_lidc.hdf5: test/labels: labels have shape '
               r'\(1, 128, 128, 3\)', config='hdf5_groups')


def test_hdf5_mask_values_fail_while_writing_leave_nothing(tmp_path):
  # Values are checked example by example while the splits are written (the
  # layout before); TFDS's temporary directory is removed on failure.
  import h5py  # pylint: disable=g-import-not-at-top
  fixtures.write_lidc_v1_hdf5(tmp_path / 'raw')
  with h5py.File(tmp_path / 'raw' / 'data_lidc.hdf5', 'a') as f:
    f['test/labels'][0, 0, 0, 1] = 7
  _build_fails(tmp_path / 'raw', tmp_path / 'data',
               r'data_lidc.hdf5: test/00000: masks holds values outside',
               config='hdf5_groups')
