"""Nothing non-finite is kept or used: the trainer stops before saving a NaN
or infinite state, resume skips a non-finite checkpoint, every restore
refuses one, a stopped run continues with other optimiser settings when the
start accepts them, and global-norm gradient clipping."""
import json
import os
import shutil
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image
import pytest

from datasets import tfds_utils
from experiments import config_checks
from experiments import synthetic_lesions
from experiments import train_lib
from experiments import train_step
from hpunet_jax.runtime import checkpointing
from hpunet_jax.runtime import metric_writers
from hpunet_jax.runtime import run_record
from tests import test_checkpoint
from tests import test_train

_REPO = test_train._REPO  # pylint: disable=protected-access
_lesions_config = test_train._lesions_config  # pylint: disable=protected-access
_train_command = test_train._train_command  # pylint: disable=protected-access
# Adam's step 6 (index 5) runs at 1e39, infinite in float32: its update makes
# the parameters non-finite, the loss of step 7 would be NaN.
_EXPLODING = {'boundaries': (5,), 'learning_rates': (1e-3, 1e39)}
_SANE = {'boundaries': (5,), 'learning_rates': (1e-3, 1e-4)}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp('tfds')
  tfds_utils.load_builder('synthetic_lesions', directory, 'tiny')
  return str(directory)


def _config(data_dir, num_train_steps, rates):
  config = _lesions_config(data_dir, num_train_steps=num_train_steps)
  config.optimizer.update(rates)
  return config


def _train(config, workdir):
  with warnings.catch_warnings():  # 1e39 overflows float32, as meant.
    warnings.filterwarnings('ignore', 'overflow encountered in cast')
    return train_lib.train_and_evaluate(config, str(workdir))


def _checkpoint_steps(workdir):
  checkpointer = checkpointing.Checkpointer(str(workdir / 'checkpoints'))
  try:
    return checkpointer.all_steps()
  finally:
    checkpointer.close()


@pytest.fixture(scope='module')
def stopped_run(data_dir, tmp_path_factory):
  """The exploding rate, checkpoints every 2 steps: stops at step 6."""
  workdir = tmp_path_factory.mktemp('stopped')
  with pytest.raises(train_lib.NonFiniteLossError) as error:
    _train(_config(data_dir, 8, _EXPLODING), workdir)
  return workdir, str(error.value)


@pytest.fixture(scope='module')
def unchecked_run(data_dir, tmp_path_factory):
  """The same run by a trainer that checks only the loss: its final
  checkpoint (step 6) holds the bad update, as a damaged run would."""
  workdir = tmp_path_factory.mktemp('unchecked')
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(train_lib, '_check_finite', lambda *args: None)
    _train(_config(data_dir, 6, _EXPLODING), workdir)
  return workdir


def _copy(workdir, tmp_path):
  copy = tmp_path / 'run'
  shutil.copytree(workdir, copy)
  return copy


# 1. The trainer keeps only finite checkpoints.


def test_exploding_rate_stops_before_saving_the_bad_update(stopped_run):
  workdir, message = stopped_run
  assert message.startswith(
      'Non-finite train state after the update of step 6 (')
  assert 'learning_rate=inf' in message
  assert 'The last checkpoint (step 4) is kept.' in message
  assert '--accept_config_changes=optimizer' in message
  assert _checkpoint_steps(workdir) == [2, 4]
  checkpointer = checkpointing.Checkpointer(str(workdir / 'checkpoints'))
  for step in (2, 4):  # Both restore: neither holds a non-finite value.
    state = checkpointer.restore_saved_state(step)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state)
               if np.issubdtype(np.asarray(x).dtype, np.floating))
  checkpointer.close()
  records = metric_writers.read_metrics(str(workdir))
  assert [r['step'] for r in records] == [1, 2, 3, 4, 5]
  assert all(r['non_finite_state'] == 0 for r in records)
  assert run_record.read_non_finite(str(workdir))['step'] == 6
  assert run_record.read_finished(str(workdir)) is None


def test_the_unchecked_run_saved_a_non_finite_checkpoint(unchecked_run):
  checkpointer = checkpointing.Checkpointer(
      str(unchecked_run / 'checkpoints'))
  assert checkpointer.all_steps() == [4, 6]
  with pytest.raises(checkpointing.NonFiniteCheckpointError):
    checkpointer.restore_saved_state(6)
  checkpointer.close()


# 2. and 3. Restore refuses it; resume falls back past it.


def test_restore_refuses_a_non_finite_checkpoint(unchecked_run):
  directory = unchecked_run / 'checkpoints'
  checkpointer = checkpointing.Checkpointer(str(directory))
  with pytest.raises(checkpointing.NonFiniteCheckpointError,
                     match=rf'checkpoint {directory}/6 holds non-finite '
                     r'values \(\d+ of \d+ values are NaN or infinite, first '
                     r'in .*\): training had diverged when it was saved\. '
                     r'Use an earlier step \(checkpoint 4 is the newest '
                     r'earlier one\): remove or move that folder, or resume '
                     'training'):
    # As every loader of a trained run restores (`hpunet_jax.load`).
    checkpointer.restore_newest(checkpointer.restore_saved_state,
                                move_unreadable=False)
  checkpointer.close()
  assert _checkpoint_steps(unchecked_run) == [4, 6]  # Left in place.


@pytest.mark.parametrize('command', ['run_metrics', 'predict'])
def test_command_lines_refuse_it_in_one_line(unchecked_run, tmp_path,
                                             command):
  image = tmp_path / 'image.png'
  Image.fromarray(np.zeros((32, 32), np.uint8)).save(image)
  args = {'run_metrics': ['-m', 'eval.run_metrics'],
          'predict': ['-m', 'experiments.predict', f'--image={image}',
                      f'--out={tmp_path / "out"}']}[command]
  run = subprocess.run(
      [sys.executable, *args, f'--workdir={unchecked_run}'], cwd=_REPO,
      env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True,
      text=True, timeout=300)
  assert run.returncode == 1, run.stderr[-2000:]
  assert 'Traceback' not in run.stderr
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith(f'{command}: checkpoint ') and (
      '/6 holds non-finite values' in last), run.stderr[-2000:]
  assert not (unchecked_run / 'eval').exists()
  assert not (tmp_path / 'out').exists()


def test_resume_refuses_other_rates_unless_accepted(unchecked_run, data_dir,
                                                    tmp_path):
  workdir = _copy(unchecked_run, tmp_path)
  with pytest.raises(config_checks.ConfigDriftError,
                     match=r'optimizer\.learning_rates: \[0\.001, 1e\+39\] '
                     r'-> \[0\.001, 0\.0001\].*--accept_config_changes'):
    train_lib.train_and_evaluate(_config(data_dir, 8, _SANE), str(workdir))
  with pytest.raises(config_checks.ConfigError,
                     match="--accept_config_changes: the config has no key "
                     "'optimiser'; nearest: optimizer"):
    train_lib.train_and_evaluate(_config(data_dir, 8, _SANE), str(workdir),
                                 accepted_changes=('optimiser',))
  assert _checkpoint_steps(workdir) == [4, 6]  # Nothing moved or written.


def test_resume_skips_it_and_continues_with_accepted_settings(
    unchecked_run, data_dir, tmp_path):
  """On the command line: a lower rate and clipping, accepted by the flag;
  the non-finite checkpoint 6 is moved aside, training goes on from 4."""
  workdir = _copy(unchecked_run, tmp_path)
  run_record.write_non_finite(str(workdir), 6, 'stopped')
  run = subprocess.run(
      _train_command(workdir, data_dir, '--config.num_train_steps=8',
                     '--config.optimizer.boundaries=(5,)',
                     '--config.optimizer.learning_rates=(0.001,0.0001)',
                     '--config.optimizer.clip_global_norm=1.0',
                     '--accept_config_changes=optimizer'),
      cwd=_REPO, env=dict(os.environ, JAX_PLATFORMS='cpu'),
      capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  moved = workdir / 'checkpoints_non_finite' / '6'
  assert (f'checkpoint 6 holds non-finite values' in run.stderr and
          f'(moved to {moved}); resuming from 4.' in run.stderr), (
              run.stderr[-3000:])
  assert ('Resuming from step 4 with changed settings: ' in run.stderr and
          'optimizer.clip_global_norm: None -> 1.0' in run.stderr)
  assert moved.is_dir()
  assert _checkpoint_steps(workdir) == [6, 8]
  records = metric_writers.read_metrics(str(workdir))
  assert [r['step'] for r in records] == list(range(1, 9))
  assert [r['learning_rate'] for r in records[5:]] == [
      pytest.approx(1e-4)] * 3
  assert all(np.isfinite(r['loss']) and r['non_finite_state'] == 0
             for r in records)
  assert run_record.read_finished(str(workdir))['step'] == 8
  assert run_record.read_non_finite(str(workdir)) is None
  assert json.loads((workdir / 'config.4.json').read_text())['optimizer'][
      'clip_global_norm'] == 1.0


# 6. The evaluation's note on unfinished runs.


def test_unfinished_note(stopped_run, tmp_path):
  workdir, _ = stopped_run
  assert run_record.unfinished_note(str(workdir), 4, 8) == (
      f'{workdir} stopped on non-finite values at step 6: evaluating its '
      'last finite checkpoint (step 4), not a finished run.')
  assert run_record.unfinished_note(str(tmp_path), 2, 8) == (
      f'{tmp_path} has not finished training (no finished.json): evaluating '
      'checkpoint step 2 of 8.')
  run_record.write_finished(str(tmp_path), 8, {'seed': 0})
  assert run_record.unfinished_note(str(tmp_path), 8, 8) is None


# 5. Gradient clipping.


def _tree(scale):
  return {'w': jnp.array([[3.0, 0.0], [0.0, 4.0]]) * scale,
          'b': jnp.array([0.0, 0.0, 12.0]) * scale}  # Global norm 13 x scale.


def test_clipping_bounds_the_global_norm_as_optax_does():
  clip = train_step.clip_gradients(optax.identity(), 6.5)
  for scale, expected_norm in ((1.0, 6.5), (0.1, 1.3)):
    grads = _tree(scale)
    clipped, _ = clip.update(grads, clip.init(grads))
    # By hand: scaled by max_norm / norm when the norm exceeds max_norm.
    factor = min(1.0, 6.5 / (13.0 * scale))
    for key in grads:
      np.testing.assert_allclose(clipped[key], grads[key] * factor,
                                 rtol=1e-6)
    np.testing.assert_allclose(optax.tree.norm(clipped), expected_norm,
                               rtol=1e-6)
    by_optax, _ = optax.clip_by_global_norm(6.5).update(grads,
                                                        optax.EmptyState())
    for key in grads:
      np.testing.assert_allclose(clipped[key], by_optax[key], rtol=1e-6)


def test_clipped_adam_is_adam_of_the_clipped_gradients():
  config = dict(boundaries=(), learning_rates=(0.1,), b1=0.9, b2=0.999,
                eps=1e-8)
  clipped, _ = train_step.make_optimizer(dict(config, clip_global_norm=1.0))
  plain, _ = train_step.make_optimizer(config)
  params = _tree(0.0)
  clipped_state, plain_state = clipped.init(params), plain.init(params)
  # Same state structure: a checkpoint resumes with clipping on or off.
  assert jax.tree.structure(clipped_state) == jax.tree.structure(plain_state)
  hand_state, unclipped_state = plain_state, plain_state
  for scale in (1.0, 0.01, 5.0):  # Norms 13, 0.13 (not clipped), 65.
    grads = _tree(scale)
    got, clipped_state = clipped.update(grads, clipped_state, params)
    factor = min(1.0, 1.0 / (13.0 * scale))
    hand, hand_state = plain.update(
        jax.tree.map(lambda g: g * factor, grads), hand_state, params)
    unclipped, unclipped_state = plain.update(grads, unclipped_state, params)
    for key in grads:
      np.testing.assert_allclose(got[key], hand[key], rtol=1e-5, atol=1e-8)
  # Adam is not scale-invariant across steps: clipping changed the update.
  assert not np.allclose(got['b'], unclipped['b'])


@pytest.mark.parametrize('value', [0.0, -1.0, float('inf'), float('nan'),
                                   True, 'big'])
def test_bad_clip_values_are_refused_naming_the_field(value):
  message = 'config.optimizer.clip_global_norm must be None'
  config = synthetic_lesions.get_config('tiny')
  config.optimizer = config.optimizer.to_dict()  # Any type, as a JSON would.
  config.optimizer['clip_global_norm'] = value
  with pytest.raises(config_checks.ConfigError, match=message):
    config_checks.validate_values(config)
  with pytest.raises(config_checks.ConfigError, match=message):
    train_step.make_optimizer(config.optimizer)


def test_clipping_off_keeps_earlier_configs_hash_and_resume():
  config = synthetic_lesions.get_config('tiny')
  without = run_record.to_dict(config)
  del without['optimizer']['clip_global_norm']  # A config saved before.
  assert run_record.config_hash(config) == run_record.config_hash(without)
  assert config_checks.config_changes(without, config) == []
  config.optimizer.clip_global_norm = 1.0
  assert run_record.config_hash(config) != run_record.config_hash(without)
  assert [c[0] for c in config_checks.config_changes(without, config)] == [
      'optimizer.clip_global_norm']


def test_count_non_finite_counts_floating_values_only():
  tree = {'a': jnp.array([1.0, jnp.nan, -jnp.inf]),
          'b': (jnp.arange(3), jnp.full((2, 2), jnp.inf, jnp.bfloat16))}
  assert int(jax.jit(train_step.count_non_finite)(tree)) == 6
  assert int(train_step.count_non_finite({'i': jnp.arange(2)})) == 0


def test_an_unset_falling_rate_keeps_earlier_configs_hash():
  config = synthetic_lesions.get_config('tiny')
  config.loss.geco_multiplier_rate_down = None  # The rule as before.
  without = run_record.to_dict(config)
  del without['loss']['geco_multiplier_rate_down']  # A config saved before.
  assert run_record.config_hash(config) == run_record.config_hash(without)
  assert config_checks.config_changes(without, config) == []
