"""Per-lesion style decoding and the hierarchy scores (`eval/lesion_styles.py`)."""
import math

import numpy as np
import pytest

from datasets.synthetic_lesions import generator
from datasets.synthetic_lesions import generator_v2
from datasets.synthetic_lesions import synthetic_lesions_dataset_builder
from eval import evaluation
from eval import lesion_styles
from eval import task_scores

# erode / keep / dilate, as the v2 default.
_STYLE_PROBS = (0.25, 0.5, 0.25)


def _hand_params(centres, probs):
  """`LesionParamsV2` of disks of radius 4 px in a 32x32 image, styles
  moving every outline by -1.5 / 0 / +1.5 px."""
  rows, cols = np.mgrid[:32, :32]
  labels = np.zeros((32, 32), np.uint8)
  for i, (r, c) in enumerate(centres):
    labels[(rows - r)**2 + (cols - c)**2 <= 16] = i + 1
  return generator_v2.LesionParamsV2(
      image_size=32, labels=labels, probs=np.asarray(probs, np.float32),
      style_scales=np.asarray((-1.5, 0.0, 1.5), np.float32),
      style_probs=np.asarray(_STYLE_PROBS, np.float32))


def _sample(params, lesion_styles_):
  """bool `[H, W]`: lesion i in style `lesion_styles_[i]` (None: absent)."""
  field = params.style_field()
  mask = np.zeros(field.shape[1:], bool)
  for i, style in enumerate(lesion_styles_):
    if style is not None:
      mask |= field[i] <= params.style_scales[style]
  return mask


def _decoded(params, per_sample_styles):
  samples = np.stack([_sample(params, s) for s in per_sample_styles])
  return lesion_styles.decode_lesion_styles(samples, params)


def test_three_lesions_by_hand():
  params = _hand_params([(8, 8), (8, 24), (24, 16)], [0.2, 0.5, 0.8])
  chosen = [(0, 0, 0), (1, 1, 2), (2, None, 0), (1, None, None)]
  styles, present = _decoded(params, chosen)
  expected = np.array([[-1 if s is None else s for s in row]
                       for row in chosen])
  np.testing.assert_array_equal(styles, expected)
  np.testing.assert_array_equal(present, expected >= 0)
  # Pairs within a sample: 3 (all same) + 3 (one same) + 1 (differ) + 0.
  assert lesion_styles.style_coherence(styles) == pytest.approx(4 / 7)
  # Styles of the 9 present lesions: 4 x 0, 3 x 1, 2 x 2;
  # TV = (|4/9 - 1/4| + |3/9 - 1/2| + |2/9 - 1/4|) / 2 = 7/36.
  assert lesion_styles.style_tv(styles, _STYLE_PROBS) == pytest.approx(7 / 36)
  # Rates (1, 1/2, 3/4) against (.2, .5, .8): mean of (.8, 0, -.05).
  assert lesion_styles.presence_bias(present, params.probs) == pytest.approx(
      0.25)


def test_two_lesions_by_hand():
  params = _hand_params([(10, 8), (20, 24)], [0.5, 0.5])
  chosen = [(0, 2), (1, 1), (2, 2), (None, 0)]
  scores = lesion_styles.hierarchy_scores(
      np.stack([_sample(params, s) for s in chosen]), params)
  # 3 pairs, 2 with one style.
  assert scores['style_coherence'] == pytest.approx(2 / 3)
  # Styles 2 x 0, 2 x 1, 3 x 2: (|2/7 - 1/4| + |2/7 - 1/2| + |3/7 - 1/4|) / 2.
  assert scores['style_tv'] == pytest.approx(3 / 14)
  # Rates (3/4, 1) against (1/2, 1/2).
  assert scores['presence_bias'] == pytest.approx(0.375)


def test_imperfect_samples_decode_to_the_nearest_style():
  params = _hand_params([(8, 8), (8, 24), (24, 16)], [0.5, 0.5, 0.5])
  field = params.style_field()
  sample = _sample(params, (0, 2, None))
  sample[8, 8 + 3] = False  # A hole in lesion 0.
  sample |= field[1] <= 2.4  # Lesion 1 dilated past the widest style.
  sample[28:, :4] = True  # A blob far from every lesion.
  sample |= (field[2] <= -3.0)  # Lesion 2's centre only: below threshold.
  styles, present = lesion_styles.decode_lesion_styles(sample[None], params)
  np.testing.assert_array_equal(styles, [[0, 2, -1]])
  np.testing.assert_array_equal(present, [[True, True, False]])


def test_undefined_scores_are_nan():
  params = _hand_params([(8, 8), (8, 24)], [0.5, 0.5])
  scores = lesion_styles.hierarchy_scores(
      np.stack([_sample(params, (1, None)), _sample(params, (None, None))]),
      params)
  assert math.isnan(scores['style_coherence'])  # No sample with two.
  assert scores['style_tv'] == pytest.approx(0.5)
  empty = lesion_styles.hierarchy_scores(np.zeros((2, 32, 32), bool), params)
  assert math.isnan(empty['style_coherence'])
  assert math.isnan(empty['style_tv'])
  assert empty['presence_bias'] == pytest.approx(-0.5)


def test_bad_threshold_and_shape_are_refused():
  params = _hand_params([(8, 8)], [0.5])
  with pytest.raises(ValueError, match='presence_threshold'):
    lesion_styles.decode_lesion_styles(np.zeros((1, 32, 32)), params, 1.5)
  with pytest.raises(ValueError, match='do not match'):
    lesion_styles.decode_lesion_styles(np.zeros((1, 16, 16)), params)


def _v2_params(config_name, index):
  config = {c.name: c for c in synthetic_lesions_dataset_builder.Builder
            .BUILDER_CONFIGS}[config_name]
  return generator_v2.params_from_features(generator_v2.generate_example(
      config.spec, config.seed,
      synthetic_lesions_dataset_builder.SPLIT_IDS['test'], index))


@pytest.mark.parametrize('config_name,num_images', [
    ('default', 12), ('few_lesions', 4), ('many_lesions', 3), ('tiny', 6)])
def test_every_v2_mode_decodes_to_its_style_for_every_lesion(config_name,
                                                             num_images):
  for index in range(num_images):
    params = _v2_params(config_name, index)
    field = params.style_field()
    num_lesions, num_styles = len(params.probs), len(params.style_scales)
    gradings, expected = [], []
    for style in range(num_styles):
      for bits in range(2**num_lesions):
        subset = np.array([(bits >> i) & 1 for i in range(num_lesions)],
                          bool)
        gradings.append(np.any(subset[:, None, None] &
                               (field <= params.style_scales[style]), 0))
        expected.append(np.where(subset, style, -1))
    # These (style, subset) gradings are exactly the enumerated modes.
    modes, _ = generator.enumerate_modes(params)
    assert ({m.astype(bool).tobytes() for m in modes} ==
            {g.tobytes() for g in gradings})
    styles, present = lesion_styles.decode_lesion_styles(
        np.stack(gradings), params)
    np.testing.assert_array_equal(styles, np.stack(expected))
    np.testing.assert_array_equal(present, np.stack(expected) >= 0)


def _independent_styles_sample(params, rng, num_samples):
  """Every lesion present, each in a style drawn independently: bool
  `[S, H, W]` and the drawn styles int `[S, N]`."""
  field = params.style_field()
  styles = rng.choice(len(_STYLE_PROBS), p=_STYLE_PROBS,
                      size=(num_samples, len(params.probs)))
  scales = np.asarray(params.style_scales)[styles]  # [S, N]
  return np.any(field[None] <= scales[:, :, None, None], axis=1), styles


def test_independent_styles_score_the_independent_coherence():
  """Coherence sum_s p_s^2 = 0.375 for per-lesion styles, right marginals."""
  rng = np.random.default_rng(0)
  coherence, tv, bias, true_bias = [], [], [], []
  for index in range(30):
    params = _v2_params('default', index)
    samples, drawn = _independent_styles_sample(params, rng, 50)
    styles, _ = lesion_styles.decode_lesion_styles(samples, params)
    np.testing.assert_array_equal(styles, drawn)
    scores = lesion_styles.hierarchy_scores(samples, params)
    coherence.append(scores['style_coherence'])
    tv.append(scores['style_tv'])
    bias.append(scores['presence_bias'])
    true_bias.append(np.mean(1 - params.probs.astype(np.float64)))
  # 2-4 lesions x 50 samples per image, 30 images: the mean's standard error
  # is about 0.009 (std over images / sqrt(30)), so 0.04 is 4 of them.
  assert np.std(coherence) / np.sqrt(30) < 0.015
  assert np.mean(coherence) == pytest.approx(0.375, abs=0.04)
  # The marginals are right, so TV is sampling noise (about 0.05 here).
  assert np.mean(tv) < 0.1
  np.testing.assert_allclose(bias, true_bias, atol=1e-6)  # Always present.


def test_oracle_samples_are_coherent():
  rng = np.random.default_rng(0)
  coherence, tv, bias = [], [], []
  for index in range(20):
    params = _v2_params('default', index)
    samples = generator.oracle_sample(params, rng, 100) > 0
    scores = lesion_styles.hierarchy_scores(samples, params)
    coherence.append(scores['style_coherence'])
    tv.append(scores['style_tv'])
    bias.append(scores['presence_bias'])
  # Every default image has >= 2 lesions, so coherence is defined: exactly 1.
  assert all(c == 1.0 for c in coherence)
  # Sampling noise only: TV about 0.06 at 100 samples; the bias's standard
  # error over 20 images is about 0.007, so 0.03 is 4 of them.
  assert np.mean(tv) < 0.12
  assert np.mean(bias) == pytest.approx(0.0, abs=0.03)


def test_score_lesions_adds_the_hierarchy_for_model_and_oracle():
  params = _v2_params('default', 0)
  modes, probs = generator.enumerate_modes(params)
  rng = np.random.default_rng(0)
  example = {'image': np.zeros((64, 64, 1), np.float32),
             'graders': generator.oracle_sample(params, rng, 4),
             'modes': modes, 'mode_probs': probs,
             'mask': np.ones((64, 64), np.float32), 'lesion_params': params}
  samples, _ = _independent_styles_sample(params, rng, 32)
  values, oracle, _ = task_scores.score_lesions(
      example, samples.astype(np.int32), lambda image, seg: seg, rng)
  names = {'style_coherence', 'style_tv', 'presence_bias'}
  assert names <= set(values) and names <= set(oracle)
  assert values['style_coherence'] < 0.6
  assert oracle['style_coherence'] == 1.0  # Draws of the enumerated modes.
  without = {k: v for k, v in example.items() if k != 'lesion_params'}
  values, oracle, _ = task_scores.score_lesions(
      without, samples.astype(np.int32), lambda image, seg: seg, rng)
  assert not names & (set(values) | set(oracle))


def test_summary_table_wraps_into_readable_blocks():
  names = ['iou_rec', 'ged_16', 'diversity_16', 'ged_100', 'diversity_100',
           'hm_iou', 'exact_ged', 'exact_hm_iou', 'ece', 'ncc',
           'style_coherence', 'style_tv', 'presence_bias']
  summary = {}
  for i, name in enumerate(names):
    summary[name], summary[name + '_std'] = 0.1 * i, 0.01
  summary['oracle'] = {'style_coherence': 1.0, 'style_coherence_std': 0.0}
  del summary['style_coherence'], summary['style_coherence_std']  # All nan.
  table = evaluation.format_table(summary)
  lines = table.split('\n')
  assert max(len(line) for line in lines) <= 120
  blocks = table.split('\n\n')
  assert len(blocks) == 3  # 6 columns of 18 characters per block.
  assert all(name in table for name in names)
  coherence_block = next(b for b in blocks if 'style_coherence' in b)
  model_line, oracle_line = coherence_block.split('\n')[1:]
  assert oracle_line.startswith('oracle') and '1.0000 ± 0.0000' in oracle_line
  assert model_line.rstrip().endswith('-')  # The model's is undefined.
