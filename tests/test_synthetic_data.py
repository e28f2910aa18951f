"""Tests of the synthetic data generators, their builders and tfds_utils."""
import hashlib

import numpy as np
import pytest
from scipy import stats

from datasets import tfds_utils
from datasets.synthetic_cells import generator as cells_generator
from datasets.synthetic_lesions import generator as lesions_generator
from datasets.synthetic_lesions import generator_v2
from datasets.synthetic_lesions import synthetic_lesions_dataset_builder

_LESION_CONFIGS = {
    c.name: c
    for c in synthetic_lesions_dataset_builder.Builder.BUILDER_CONFIGS}

_TINY_LESIONS = lesions_generator.LesionsSpec(
    image_size=32, max_lesions=2, radius_range=(0.07, 0.12))


def _params(spec, index, seed=0):
  example = lesions_generator.generate_example(spec, seed, 0, index)
  return example, lesions_generator.LesionParams.from_features(example)


def _mode_index(modes):
  return {mode.tobytes(): j for j, mode in enumerate(modes.astype(np.int32))}


def _chi_square_p_values(samples, modes, probs) -> tuple[float, float]:
  """Chi-square p-values of draws `samples` [D, H, W] against the modes'
  distribution (`modes` [M, H, W], `probs` [M] > 0) and against a uniform one
  over the same bins; the rare modes are pooled into one bin so every bin
  expects at least 5 draws."""
  by_mask = _mode_index(modes)
  counts = np.bincount([by_mask[s.tobytes()] for s in samples],
                       minlength=len(modes))
  expected = len(samples) * probs
  rare = expected < 5
  observed, expected = counts[~rare], expected[~rare]
  if rare.any():
    observed = np.append(observed, counts[rare].sum())
    expected = np.append(expected, len(samples) * probs[rare].sum())
  _, p_value = stats.chisquare(observed, expected)
  uniform = np.full(len(observed), len(samples) / len(observed))
  _, p_wrong = stats.chisquare(observed, uniform)
  return p_value, p_wrong


@pytest.mark.parametrize('spec', [
    lesions_generator.LesionsSpec(),
    lesions_generator.LesionsSpec(min_lesions=4, max_lesions=6),
    _TINY_LESIONS,
])
def test_modes_are_distinct_and_probabilities_sum_to_one(spec):
  for index in range(5):
    _, params = _params(spec, index)
    modes, probs = lesions_generator.enumerate_modes(params)
    size = spec.image_size
    assert modes.dtype == np.int32 and modes.shape[1:] == (size, size)
    assert probs.dtype == np.float64 and probs.shape == (len(modes),)
    assert abs(probs.sum() - 1) < 1e-12 and probs.min() > 0
    assert set(np.unique(modes)) <= {0, 1}
    assert len(_mode_index(modes)) == len(modes)  # No duplicates left.
    # At most styles x 2^N modes; the empty mask of all styles is merged.
    num_lesions = len(params.radii)
    assert len(modes) <= len(params.style_scales) * (2**num_lesions - 1) + 1


def test_mode_probabilities_match_closed_form():
  _, params = _params(lesions_generator.LesionsSpec(), index=3)
  modes, probs = lesions_generator.enumerate_modes(params)
  lesion_probs = params.probs.astype(np.float64)
  style_probs = params.style_probs.astype(np.float64)
  by_mask = _mode_index(modes)
  empty = np.zeros_like(modes[0])
  assert probs[by_mask[empty.tobytes()]] == pytest.approx(
      np.prod(1 - lesion_probs))
  rho = lesions_generator.normalised_radius(params)
  for scale, style_prob in zip(params.style_scales, style_probs):
    everything = np.any(rho <= scale, axis=0).astype(np.int32)
    assert probs[by_mask[everything.tobytes()]] == pytest.approx(
        style_prob * np.prod(lesion_probs))


def test_oracle_sample_follows_enumerated_distribution():
  _, params = _params(lesions_generator.LesionsSpec(), index=3)
  modes, probs = lesions_generator.enumerate_modes(params)
  samples = lesions_generator.oracle_sample(params, np.random.default_rng(0),
                                            4_000)
  p_value, p_wrong = _chi_square_p_values(samples, modes, probs)
  assert p_value > 1e-3
  assert p_wrong < 1e-6  # A wrong (uniform) distribution is rejected.


def test_generated_graders_follow_stated_distribution():
  """Stored graders: lesion marginals match `p`, the style is shared by all
  lesions of a grading and follows `style_probs` (chi-square, fixed seed)."""
  spec = lesions_generator.LesionsSpec()
  segmented_by_level = {p: [0, 0] for p in spec.abnormal_probs}
  style_counts = np.zeros(len(spec.style_scales), np.int64)
  for index in range(200):
    example, params = _params(spec, index, seed=7)
    rho = lesions_generator.normalised_radius(params)
    centres = np.round(params.centres).astype(int)
    for grader in example['graders']:
      segmented = grader[centres[:, 0], centres[:, 1]] > 0
      for p, is_segmented in zip(params.probs, segmented):
        level = min(spec.abnormal_probs, key=lambda q: abs(q - p))
        segmented_by_level[level][0] += int(is_segmented)
        segmented_by_level[level][1] += 1
      if not segmented.any():
        assert not grader.any()
        continue
      matching = [s for s, scale in enumerate(params.style_scales)
                  if np.array_equal(grader, np.any(
                      (rho <= scale) & segmented[:, None, None], axis=0))]
      assert matching, 'grading is not one style applied to all its lesions'
      if len(matching) == 1:
        style_counts[matching[0]] += 1
  chi2 = 0.0
  for p, (hits, total) in segmented_by_level.items():
    chi2 += (hits - total * p)**2 / (total * p * (1 - p))
  assert stats.chi2.sf(chi2, df=len(segmented_by_level)) > 1e-3
  _, p_style = stats.chisquare(
      style_counts, style_counts.sum() * np.asarray(spec.style_probs))
  assert p_style > 1e-3


def test_contrast_cue_increases_with_abnormal_probability():
  spec = lesions_generator.LesionsSpec()
  probs, contrasts = [], []
  for index in range(60):
    example, params = _params(spec, index)
    image = example['image'][..., 0].astype(np.float64)
    rho = lesions_generator.normalised_radius(params)
    for p, r in zip(params.probs, rho):
      ring = (r > 1.6) & (r < 2.6)
      contrasts.append(image[r < 0.6].mean() - image[ring].mean())
      probs.append(p)
  assert np.corrcoef(probs, contrasts)[0, 1] > 0.5


def test_generation_is_deterministic():
  a = lesions_generator.generate_example(_TINY_LESIONS, 5, 1, 3)
  b = lesions_generator.generate_example(_TINY_LESIONS, 5, 1, 3)
  c = lesions_generator.generate_example(_TINY_LESIONS, 5, 1, 4)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  assert not np.array_equal(a['image'], c['image'])
  spec = cells_generator.CellsSpec(image_size=32, min_cells=4, max_cells=8)
  a = cells_generator.generate_example(spec, 5, 1, 3)
  b = cells_generator.generate_example(spec, 5, 1, 3)
  c = cells_generator.generate_example(spec, 5, 2, 3)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  assert not np.array_equal(a['instances'], c['instances'])


def test_cells_instances_and_membranes():
  spec = cells_generator.CellsSpec()
  for index in range(10):
    example = cells_generator.generate_example(spec, 0, 0, index)
    instances, image = example['instances'], example['image'][..., 0]
    assert instances.dtype == np.int32 and image.dtype == np.uint8
    ids = np.unique(instances)
    assert ids[0] == 0 and np.array_equal(ids[1:], np.arange(1, len(ids)))
    assert spec.min_cells // 2 <= len(ids) - 1 <= spec.max_cells
    assert 0.05 < np.mean(instances == 0) < 0.4
    assert image[instances == 0].mean() < image[instances > 0].mean() - 40


def test_bad_specs_and_too_many_modes_raise():
  with pytest.raises(ValueError, match='style_probs'):
    lesions_generator.LesionsSpec(style_probs=(0.5, 0.2, 0.2))
  with pytest.raises(ValueError, match='min_lesions'):
    lesions_generator.LesionsSpec(min_lesions=3, max_lesions=2)
  with pytest.raises(ValueError, match='could not place'):
    lesions_generator.generate_example(
        lesions_generator.LesionsSpec(image_size=32, min_lesions=9,
                                      max_lesions=9, radius_range=(0.15, 0.2)),
        0, 0, 0)
  _, params = _params(lesions_generator.LesionsSpec(), 0)
  many = params._replace(
      centres=np.zeros((13, 2), np.float32), radii=np.ones(13, np.float32),
      harmonics=np.zeros((13, 3, 2), np.float32),
      probs=np.full(13, 0.5, np.float32))
  with pytest.raises(ValueError, match='modes'):
    lesions_generator.enumerate_modes(many)
  with pytest.raises(tfds_utils.UnknownDatasetError, match='no_such_set'):
    tfds_utils.builder_class('no_such_set')


# sha256 (first 16 hex digits) over the sorted arrays of test examples 0-2 of
# each v1 config, computed with the code before version 2 existed (commit
# 5aac573, where these configs were named default / many_lesions / tiny).
_V1_DIGESTS = {'v1': '049dca85cce64c74', 'v1_many_lesions': 'cb3a4adaa650e7f0',
               'v1_tiny': 'c974f1d0efa74e4a'}


@pytest.mark.parametrize('name', sorted(_V1_DIGESTS))
def test_v1_configs_generate_the_old_data(name):
  config = _LESION_CONFIGS[name]
  digest = hashlib.sha256()
  for index in range(3):
    example = synthetic_lesions_dataset_builder.generate_example(
        config.spec, config.seed, 2, index)
    for key in sorted(example):
      digest.update(np.ascontiguousarray(example[key]).tobytes())
  assert digest.hexdigest()[:16] == _V1_DIGESTS[name]


@pytest.mark.parametrize('name', ['default', 'few_lesions', 'many_lesions',
                                  'tiny'])
def test_v2_modes_sum_to_one_and_match_the_graders(name):
  """Every v2 config: enumerated probabilities sum to 1; oracle draws follow
  them (chi-square, fixed seed), and a uniform distribution is rejected."""
  spec, seed = _LESION_CONFIGS[name].spec, _LESION_CONFIGS[name].seed
  example = generator_v2.generate_example(spec, seed, 0, 1)
  params = generator_v2.params_from_features(example)
  assert spec.min_lesions <= len(params.probs) <= spec.max_lesions
  modes, probs = lesions_generator.enumerate_modes(params)
  assert abs(probs.sum() - 1) < 1e-12 and probs.min() > 0
  assert len(_mode_index(modes)) == len(modes)
  samples = lesions_generator.oracle_sample(params, np.random.default_rng(3),
                                            4_000)
  p_value, p_wrong = _chi_square_p_values(samples, modes, probs)
  assert p_value > 1e-3
  assert p_wrong < 1e-6


def test_v2_stored_graders_share_one_style_and_follow_the_probabilities():
  """Stored graders of v2: every grading is one style applied to all its
  lesions; style and presence frequencies match (chi-square, fixed seed)."""
  spec = _LESION_CONFIGS['default'].spec
  present_counts = {p: [0, 0] for p in spec.abnormal_probs}
  style_counts = np.zeros(len(spec.style_offsets), np.int64)
  for index in range(150):
    example = generator_v2.generate_example(spec, 7, 0, index)
    params = generator_v2.params_from_features(example)
    field = params.style_field()
    for grader in example['graders'].astype(bool):
      cores = field <= min(spec.style_offsets)  # In every style's mask.
      present = np.array([grader[c].all() for c in cores])
      assert all(grader[c].any() == p for c, p in zip(cores, present))
      for p, is_present in zip(params.probs, present):
        level = min(spec.abnormal_probs, key=lambda q: abs(q - p))
        present_counts[level][0] += int(is_present)
        present_counts[level][1] += 1
      matching = [s for s, offset in enumerate(spec.style_offsets)
                  if np.array_equal(grader, np.any(
                      (field <= offset) & present[:, None, None], axis=0))]
      assert len(matching) == (1 if present.any() else len(matching))
      assert matching, 'grading is not one style applied to all its lesions'
      if present.any():
        style_counts[matching[0]] += 1
  chi2 = sum((hits - total * p)**2 / (total * p * (1 - p))
             for p, (hits, total) in present_counts.items())
  assert stats.chi2.sf(chi2, df=len(present_counts)) > 1e-3
  _, p_style = stats.chisquare(
      style_counts, style_counts.sum() * np.asarray(spec.style_probs))
  assert p_style > 1e-3


def test_v2_styles_move_every_outline_by_the_offset():
  spec = _LESION_CONFIGS['default'].spec
  params = generator_v2.params_from_features(
      generator_v2.generate_example(spec, 0, 0, 0))
  field = params.style_field()
  for mask, lesion_field in zip(params.lesion_masks(), field):
    assert np.array_equal(lesion_field <= 0, mask)
    narrow, wide = lesion_field <= -2.5, lesion_field <= 2.5
    # Erosion / dilation by about 2 px: a strong change of every lesion.
    assert 0 < narrow.sum() < 0.7 * mask.sum()
    assert wide.sum() > 1.4 * mask.sum()


@pytest.mark.parametrize('kwargs,field', [
    (dict(max_lesions=9), 'max_lesions'),
    (dict(abnormal_probs=(0.0, 0.5, 0.8)), 'abnormal_probs'),
    (dict(abnormal_probs=(0.2, 0.5, 1.0)), 'abnormal_probs'),
    (dict(cue_levels=(0.3, 0.4, 0.7)), 'cue_levels'),
    (dict(cue_levels=(0.3, 0.5)), 'cue_levels'),
    (dict(noise_std=0.05), 'cue_levels'),
    (dict(style_offsets=(-2.0, 0.0, 2.0)), 'style_offsets'),
    (dict(radius_range=(0.04, 0.06)), 'radius_range'),
    (dict(style_probs=(0.5, 0.2, 0.2)), 'style_probs'),
    (dict(min_lesions=0), 'min_lesions'),
])
def test_v2_bad_specs_raise_naming_the_field(kwargs, field):
  with pytest.raises(ValueError, match=field):
    generator_v2.LesionsSpecV2(**kwargs)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tfds')


def test_tiny_lesions_build_reads_back(data_dir):
  builder = tfds_utils.load_builder('synthetic_lesions', data_dir, 'tiny')
  assert builder.info.splits['train'].num_examples == 16
  source = tfds_utils.data_source('synthetic_lesions', 'validation', data_dir,
                                  'tiny')
  assert len(source) == 8
  config = builder.builder_config
  for i in range(len(source)):
    record = source[i]
    assert record['image'].dtype == np.uint8
    assert record['image'].shape == (32, 32, 1)
    assert record['graders'].dtype == np.uint8
    assert record['graders'].shape == (4, 32, 32)
    # The stored record is exactly what the generator makes for its index.
    expected = generator_v2.generate_example(
        config.spec, config.seed,
        synthetic_lesions_dataset_builder.SPLIT_IDS['validation'],
        int(record['index']))
    for key, value in expected.items():
      np.testing.assert_array_equal(record[key], value, err_msg=key)
    # The stored parameters regenerate modes that contain every grader.
    params = generator_v2.params_from_features(record)
    by_mask = _mode_index(lesions_generator.enumerate_modes(params)[0])
    assert all(g.astype(np.int32).tobytes() in by_mask
               for g in record['graders'])


def test_tiny_cells_build_reads_back(data_dir):
  source = tfds_utils.data_source('synthetic_cells', 'train', data_dir, 'tiny')
  assert len(source) == 16
  record = source[3]
  assert record['image'].dtype == np.uint8
  assert record['image'].shape == (32, 32, 1)
  assert record['instances'].dtype == np.int32
  assert record['instances'].shape == (32, 32)
  assert record['instances'].max() >= 1
  with pytest.raises(ValueError, match='no split'):
    tfds_utils.data_source('synthetic_cells', 'nope', data_dir, 'tiny')


def test_failed_build_leaves_no_dataset(tmp_path, monkeypatch):
  real_generate = generator_v2.generate_example

  def generate_then_fail(spec, seed, split_id, index):
    if index == 5:
      raise RuntimeError('generation failed')
    return real_generate(spec, seed, split_id, index)

  monkeypatch.setattr(generator_v2, 'generate_example', generate_then_fail)
  with pytest.raises(RuntimeError, match='generation failed'):
    tfds_utils.load_builder('synthetic_lesions', tmp_path, 'tiny')
  assert not (tmp_path / 'synthetic_lesions' / 'tiny').exists()
  assert not list(tmp_path.rglob('*.array_record*'))
  assert not list(tmp_path.rglob('dataset_info.json'))
