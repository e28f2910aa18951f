"""`experiments.convergence`: GECO equilibrium (judged from logged metrics)
and the ELBO's held-out plateau (from the last two checkpoints); the trainer
and the study record the verdict."""
import json
import math

import ml_collections
import pytest

from experiments import convergence
from experiments import heldout_loss
from experiments import synthetic_lesions
from experiments import train_lib
from hpunet_jax import models
from hpunet_jax import precision
from hpunet_jax import trained_run
from hpunet_jax.runtime import run_record

SETTINGS = dict(window_steps=300, constraint_band=0.2,
                max_log_lambda_drift=0.3, loss_plateau_tolerance=0.02,
                heldout_examples=8, heldout_split='validation',
                spike_factor=3.0)


def _geco_history(constraints, lambdas, every=50):
  return [{'step': every * (i + 1), 'constraint_per_pixel': c, 'lambda': l,
           'loss': 1.0} for i, (c, l) in enumerate(zip(constraints, lambdas))]


def _config(objective='geco', steps=600, kappa=0.25):
  return ml_collections.ConfigDict(dict(
      num_train_steps=steps, convergence=SETTINGS,
      loss=dict(objective=objective, kappa=kappa)))


def test_geco_at_kappa_with_steady_lambda_is_converged():
  # 12 logged steps; the last 300 steps hold steps 350..600 (6 logs).
  history = _geco_history([0.3] * 6 + [0.01, -0.02, 0.03, 0.0, -0.01, 0.02],
                          [5.0] * 6 + [1.0, 1.05, 1.1, 1.0, 1.02, 1.1])
  verdict = convergence.assess(_config(), history)
  assert verdict.converged and verdict.rule == 'geco_equilibrium'
  assert verdict.values['constraint_per_pixel'] == pytest.approx(0.005)
  assert verdict.values['band'] == pytest.approx(0.05)  # 0.2 * kappa.
  assert verdict.values['log_lambda_drift'] == pytest.approx(math.log(1.1))
  assert verdict.values['window_first_step'] == 350


def test_geco_falling_phase_is_not_converged():
  # The main job's last 300 steps: constraint -0.21 per pixel, lambda
  # falling by a factor e in the window.
  history = _geco_history([-0.21] * 12,
                          [math.exp(-0.2 * i) for i in range(12)])
  verdict = convergence.assess(_config(), history)
  assert not verdict.converged
  assert 'constraint -0.2100 per pixel outside +-0.0500' in verdict.reason
  assert 'log lambda moved -1.000' in verdict.reason
  # In band but lambda still moving: the drift alone fails it.
  history = _geco_history([0.0] * 12, [math.exp(0.1 * i) for i in range(12)])
  verdict = convergence.assess(_config(), history)
  assert not verdict.converged
  assert 'outside' not in verdict.reason and 'log lambda moved +0.500' in (
      verdict.reason)


def test_too_few_logged_steps_are_not_judged_converged():
  history = _geco_history([0.0] * 2, [1.0] * 2, every=300)  # 300, 600.
  verdict = convergence.assess(_config(), history)
  assert not verdict.converged and verdict.reason.startswith('not judged')
  # A run shorter than the window, however often it logged.
  history = _geco_history([0.0] * 20, [1.0] * 20, every=10)  # 10..200.
  verdict = convergence.assess(_config(steps=200), history)
  assert not verdict.converged
  assert verdict.reason == ('not judged: 200 steps, 20 logged in the window '
                            'of the last 300')


def test_elbo_heldout_plateau():
  verdict = convergence.assess(_config('elbo'), [], (450, 100.0, 98.5))
  assert verdict.converged and verdict.rule == 'heldout_loss_plateau'
  assert verdict.values == {'heldout_loss': 98.5, 'heldout_loss_before': 100.0,
                            'step_before': 450, 'relative_change': -0.015}
  assert verdict.reason == ('held-out loss at step 450 -> 600: 100 -> 98.5 '
                            '(-1.5%, limit 2%)')
  # Rising counts as much as falling: the loss has not settled.
  verdict = convergence.assess(_config('elbo'), [], (450, 100.0, 102.5))
  assert not verdict.converged
  assert verdict.values['relative_change'] == pytest.approx(0.025)
  # The logged (single-batch) losses are not read: only the checkpoints'.
  verdict = convergence.assess(_config('elbo'),
                               [{'step': 600, 'loss': 1e9}], None)
  assert not verdict.converged and verdict.reason.startswith('not judged')


@pytest.mark.parametrize('field, value', [
    ('window_steps', 0), ('window_steps', 2.5), ('constraint_band', 0.0),
    ('max_log_lambda_drift', float('nan')), ('loss_plateau_tolerance', -1),
    ('spike_factor', 0), ('heldout_examples', 0), ('heldout_examples', 1.5)])
def test_settings_no_run_can_meet_are_refused(field, value):
  with pytest.raises(ValueError, match=f'config.convergence.{field} must'):
    convergence.check_convergence_config(dict(SETTINGS, **{field: value}))


def test_trainer_refuses_such_settings_before_writing_anything(tmp_path):
  config = synthetic_lesions.get_config('tiny')
  config.convergence.constraint_band = -0.1
  config.data.data_dir = str(tmp_path / 'tfds')
  with pytest.raises(ValueError, match='config.convergence.constraint_band'):
    train_lib.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run' / 'checkpoints').exists()


def test_spike_counter_hand_case():
  counter = convergence.SpikeCounter(factor=3.0)
  decay = convergence.SPIKE_AVERAGE_DECAY
  assert not counter.update(1.0)  # The first step has no reference.
  assert not counter.update(2.9)  # 2.9 < 3 x 1.0.
  average = decay * 1.0 + (1 - decay) * 2.9
  assert counter.average == pytest.approx(average)
  assert counter.update(3.1 * average)  # Above 3 x the moving average.
  assert not counter.update(0.1)  # Falling never is a spike.


def test_spike_steps_count_a_step_once_and_stop_at_the_end(tmp_path):
  for step in (7, 12, 12, 40):  # 12 again after a resume.
    convergence.record_spike(str(tmp_path), step, 2.0, 0.5)
  assert convergence.spike_steps(str(tmp_path), last_step=30) == [7, 12]
  assert convergence.spike_steps(str(tmp_path / 'none'), 30) == []


def test_read_history_keeps_the_last_record_of_a_step(tmp_path):
  lines = [{'step': 50, 'loss': 3.0}, {'step': 100, 'loss': 2.0},
           {'step': 100, 'loss': 1.0}]  # Resumed from step 50.
  (tmp_path / 'metrics.jsonl').write_text(
      '\n'.join(json.dumps(l) for l in lines) + '\n')
  assert convergence.read_history(str(tmp_path)) == [lines[0], lines[2]]
  (tmp_path / 'metrics.jsonl').write_text('{"step": 1}\nnot json\n')
  with pytest.raises(ValueError, match='metrics.jsonl, line 2: not JSON'):
    convergence.read_history(str(tmp_path))


def test_settings_are_resume_safe():
  config = synthetic_lesions.get_config('tiny')
  before = run_record.config_hash(config)
  config.convergence.window_steps = 7
  assert run_record.config_hash(config) == before


def test_trainer_records_the_verdict(tmp_path):
  config = synthetic_lesions.get_config('tiny')
  config.num_train_steps = 4
  config.log_every_steps = 1
  config.eval.num_samples = 0
  config.convergence.window_steps = 2
  config.data.data_dir = str(tmp_path / 'tfds')
  train_lib.train_and_evaluate(config, str(tmp_path / 'run'))
  record = run_record.read_finished(str(tmp_path / 'run'))
  assert record['step'] == 4
  assert record['convergence']['rule'] == 'geco_equilibrium'
  assert record['converged'] == record['convergence']['converged']
  assert record['convergence']['values']['window_first_step'] == 3
  spikes = convergence.spike_steps(str(tmp_path / 'run'), 4)
  assert record['convergence']['values']['spikes'] == len(spikes)
  expected = convergence.assess(config, convergence.read_history(
      str(tmp_path / 'run')))
  expected.values['spikes'] = len(spikes)
  assert record['convergence'] == json.loads(json.dumps(expected.to_dict()))


def _tiny_elbo_run(tmp_path, keep=2):
  config = synthetic_lesions.get_config('spunet,tiny')
  config.num_train_steps = 4
  config.checkpoint_every_steps = 2
  config.checkpoints_to_keep = keep
  config.eval.num_samples = 0
  config.data.data_dir = str(tmp_path / 'tfds')
  train_lib.train_and_evaluate(config, str(tmp_path / 'run'))
  return config, str(tmp_path / 'run')


def test_trainer_judges_the_elbo_on_its_last_two_checkpoints(tmp_path):
  config, workdir = _tiny_elbo_run(tmp_path)
  record = run_record.read_finished(workdir)
  assert record['convergence']['rule'] == 'heldout_loss_plateau'
  values = record['convergence']['values']
  assert values['step_before'] == 2
  # The losses are the objective on the held-out batches at steps 2 and 4.
  model = precision.mixed_precision_model(
      models.make_model(config.model_type, config.model.to_dict()),
      config.compute_dtype)
  batch_loss = heldout_loss.loss_function(config, model)
  batches = heldout_loss.heldout_batches(config)
  assert [b['image'].shape[0] for b in batches] == [2, 2]  # 4 examples.
  for step, key in ((2, 'heldout_loss_before'), (4, 'heldout_loss')):
    params = trained_run.load(workdir, step, config).params
    assert values[key] == pytest.approx(
        heldout_loss.mean_loss(batch_loss, params, batches), rel=1e-6)
  change = values['heldout_loss'] / values['heldout_loss_before'] - 1
  assert values['relative_change'] == pytest.approx(change)
  assert record['converged'] == (abs(change) <= 0.02)


def test_one_kept_checkpoint_is_not_judged(tmp_path):
  _, workdir = _tiny_elbo_run(tmp_path, keep=1)
  record = run_record.read_finished(workdir)
  assert record['converged'] is False
  assert record['convergence']['reason'].startswith('not judged: fewer than '
                                                    'two kept checkpoints')
