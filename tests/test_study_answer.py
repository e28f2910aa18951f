"""The answer decomposition of the study (`experiments/study/answer.py`)."""
import numpy as np
import pytest

from datasets.synthetic_lesions import generator
from datasets.synthetic_lesions import generator_v2
from datasets.synthetic_lesions import synthetic_lesions_dataset_builder
from eval import metrics
from experiments.study import answer as study_answer


def _v2_params(index=0):
  config = {c.name: c for c in synthetic_lesions_dataset_builder.Builder
            .BUILDER_CONFIGS}['default']
  example = generator_v2.generate_example(
      config.spec, config.seed,
      synthetic_lesions_dataset_builder.SPLIT_IDS['test'], index)
  return generator_v2.params_from_features(example)


def _grading(params, style, subset):
  field = params.style_field()
  return np.any(np.asarray(subset)[:, None, None] &
                (field <= params.style_scales[style]), axis=0)


def _scores(samples, params):
  modes, probs = generator.enumerate_modes(params)
  return study_answer.answer_scores(np.asarray(samples), params, modes > 0,
                                    probs, presence_threshold=0.5)


def test_true_gradings_snap_to_themselves():
  params = _v2_params()
  samples = generator.oracle_sample(params, np.random.default_rng(0), 50) > 0
  scores = _scores(samples, params)
  assert scores['mode_iou'] == 1.0
  assert scores['exact_ged_snapped'] == pytest.approx(scores['exact_ged'],
                                                      abs=1e-12)
  modes, probs = generator.enumerate_modes(params)
  assert scores['exact_ged'] == pytest.approx(
      metrics.weighted_generalized_energy_distance(samples, None, modes > 0,
                                                   probs))


def test_one_grading_repeated_by_hand():
  """Every sample the 'keep' style with all lesions present."""
  params = _v2_params()
  num_lesions = len(params.probs)
  keep = _grading(params, 1, [True] * num_lesions)
  scores = _scores(np.stack([keep] * 10), params)
  p = np.asarray(params.probs, np.float64)
  style_probs = np.asarray(params.style_probs, np.float64)
  assert style_probs[1] == pytest.approx(0.5)
  assert scores['style_frac_1'] == 1.0 and scores['style_frac_0'] == 0.0
  # TV = (|1 - .5| + .25 + .25) / 2.
  assert scores['sample_style_tv'] == pytest.approx(0.5)
  assert scores['presence_mae'] == pytest.approx(np.mean(1 - p))
  assert scores['presence_bias'] == pytest.approx(np.mean(1 - p))
  assert scores['frac_empty'] == 0.0
  assert scores['frac_empty_truth'] == pytest.approx(np.prod(1 - p))
  # A point mass on mode m: GED = 2 E_k d(m, m_k) - E_kl d(m_k, m_l).
  modes, probs = generator.enumerate_modes(params)
  modes = modes > 0
  d_m = np.array([1 - metrics.iou(keep, mode) for mode in modes])
  d_kl = np.array([[1 - metrics.iou(a, b) for b in modes] for a in modes])
  expected = 2 * probs @ d_m - probs @ d_kl @ probs
  assert scores['exact_ged'] == pytest.approx(expected, abs=1e-9)
  assert scores['exact_ged_snapped'] == pytest.approx(expected, abs=1e-9)


def test_pixel_errors_are_separated_from_probability_errors():
  """Shifted true gradings: pixels off (mode_iou < 1, raw GED larger), but
  they snap back to the unshifted gradings, so the snapped GED is the
  true gradings' own."""
  params = _v2_params()
  samples = generator.oracle_sample(params, np.random.default_rng(1), 40) > 0
  shifted = np.roll(samples, 1, axis=2)
  exact = _scores(samples, params)
  off = _scores(shifted, params)
  assert off['mode_iou'] < 0.95
  assert off['exact_ged'] > exact['exact_ged'] + 0.05
  assert off['exact_ged_snapped'] == pytest.approx(exact['exact_ged'],
                                                   abs=1e-12)


def test_empty_samples():
  params = _v2_params()
  scores = _scores(np.zeros((5, 64, 64), bool), params)
  assert scores['frac_empty'] == 1.0 and scores['mode_iou'] == 1.0
  assert np.isnan(scores['sample_style_tv']) and np.isnan(scores['style_frac_0'])
  assert scores['presence_bias'] == pytest.approx(-np.mean(params.probs))


def test_snapped_gradings_rebuild_the_decoded_modes():
  params = _v2_params(1)
  num_lesions = len(params.probs)
  subset = np.arange(num_lesions) % 2 == 0
  styles = np.array([0, 2, -1])
  present = np.stack([subset, ~subset, np.zeros(num_lesions, bool)])
  snapped = study_answer.snapped_gradings(styles, present, params)
  np.testing.assert_array_equal(snapped[0], _grading(params, 0, subset))
  np.testing.assert_array_equal(snapped[1], _grading(params, 2, ~subset))
  assert not snapped[2].any()
