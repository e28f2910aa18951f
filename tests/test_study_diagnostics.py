"""Diagnostics of the synthetic study: training end state, entropy, lambda."""
import json
import math

import ml_collections
import numpy as np
import optax
import pytest
from scipy import stats

from datasets.synthetic_lesions import generator
from experiments.study import diagnostics as study_diagnostics


def test_training_end_averages_the_last_training_rows(tmp_path):
  rows = [{'step': s, 'lambda': 1.0 + s / 100, 'rec_mean': 0.5 - s / 1000,
           'kl_0': 0.1, 'kl_1': s / 10, 'kl_sum': 0.1 + s / 10, 'loss': 3.0}
          for s in (10, 20, 30)]
  rows.append({'step': 30, 'iou_rec': 0.9})  # An evaluation row.
  with open(tmp_path / 'metrics.jsonl', 'w') as f:
    f.write('\n'.join(json.dumps(r) for r in rows) + '\n')
  end = study_diagnostics.training_end(str(tmp_path), num_rows=2)
  assert end == pytest.approx({'step': 30, 'lambda': 1.25, 'rec_mean': 0.475,
                               'kl_0': 0.1, 'kl_1': 2.5, 'kl_sum': 2.6})
  assert study_diagnostics.training_end(str(tmp_path / 'none')) == {}
  both = study_diagnostics.mean_training_end([end, dict(end, kl_0=0.3), {}])
  assert both['kl_0'] == pytest.approx(0.2) and both['lambda'] == 1.25


def test_answer_entropy_matches_the_closed_form():
  """Joint entropy of style and lesion subset, minus the style entropy of
  the empty grading (all styles' empty masks are one answer)."""
  spec = generator.LesionsSpec()
  examples = [generator.generate_example(spec, seed=0, split_id=2, index=i)
              for i in range(4)]
  expected, mode_probs = [], []
  for example in examples:
    params = generator.LesionParams.from_features(example)
    mode_probs.append(generator.enumerate_modes(params)[1])
    style = np.asarray(params.style_probs, np.float64)
    style = style / style.sum()
    p = np.asarray(params.probs, np.float64)
    joint = stats.entropy(style) + sum(stats.entropy([q, 1 - q]) for q in p)
    expected.append(joint - np.prod(1 - p) * stats.entropy(style))
  got = study_diagnostics.answer_entropy_nats(mode_probs)
  assert got['num_images'] == 4
  assert got['mean'] == pytest.approx(np.mean(expected), rel=1e-6)
  assert got['std'] == pytest.approx(np.std(expected), rel=1e-5)


def _config(boundaries, rates, steps):
  return ml_collections.ConfigDict(dict(
      num_train_steps=steps,
      optimizer=dict(boundaries=boundaries, learning_rates=rates)))


def test_geco_lambda_at_lr_rate_by_hand():
  softplus = lambda x: math.log1p(math.exp(x))
  v0 = math.log(math.e - 1)
  bound = study_diagnostics.geco_lambda_at_lr_rate(
      _config((700,), (5e-4, 1e-4), 1000))
  assert bound == pytest.approx(softplus(v0 + 700 * 5e-4 + 300 * 1e-4)**2)
  # Stopping before the drop.
  early = study_diagnostics.geco_lambda_at_lr_rate(_config((700,), (5e-4, 1e-4),
                                                      500))
  assert early == pytest.approx(softplus(v0 + 500 * 5e-4)**2)


def test_adam_on_a_steady_gradient_rises_at_the_learning_rate():
  """Ascending v with Adam on a gradient of constant size (as GECO's with a
  constant constraint, were d lambda / d v constant) reaches that lambda."""
  schedule = optax.piecewise_constant_schedule(5e-4, {70: 0.2})
  adam = optax.adam(schedule)
  v = np.float32(math.log(math.e - 1))
  state = adam.init(v)
  for _ in range(100):
    grad = np.float32(-1e-2 * 20.0)  # -rate * constraint: ascend.
    updates, state = adam.update(grad, state)
    v = optax.apply_updates(v, updates)
  reached = math.log1p(math.exp(float(v)))**2
  bound = study_diagnostics.geco_lambda_at_lr_rate(_config((70,), (5e-4, 1e-4),
                                                      100))
  assert reached == pytest.approx(bound, rel=1e-3)
