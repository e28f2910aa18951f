"""Nothing lost, nothing mixed (issue 17): one trainer per workdir, a damaged
checkpoint skipped, config drift on resume, the run's own records, value
checks and one-line errors."""
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from datasets import tfds_utils
from experiments import config_checks
from experiments import synthetic_lesions
from experiments import train_lib
from hpunet_jax.runtime import checkpointing
from hpunet_jax.runtime import run_record
from hpunet_jax.runtime import workdir_lock
from tests import helpers
from tests import test_checkpoint
from tests import test_train

_REPO = test_train._REPO  # pylint: disable=protected-access
_lesions_config = test_train._lesions_config  # pylint: disable=protected-access
_flat = test_train._flat  # pylint: disable=protected-access
_train_command = test_train._train_command  # pylint: disable=protected-access


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp('tfds')
  tfds_utils.load_builder('synthetic_lesions', directory, 'tiny')
  return str(directory)


@pytest.fixture(scope='module')
def tiny_run(data_dir, tmp_path_factory):
  """4 steps with checkpoints at 2 and 4; the final state."""
  workdir = tmp_path_factory.mktemp('tiny_run')
  state = train_lib.train_and_evaluate(_lesions_config(data_dir), str(workdir))
  return workdir, state


def _copy_run(tiny_run, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(tiny_run[0], workdir)
  return workdir


# 1. One trainer per workdir.


def test_lock_names_its_holder_and_is_released(tmp_path):
  with workdir_lock.WorkdirLock(str(tmp_path)):
    with pytest.raises(workdir_lock.WorkdirLockedError,
                       match=rf'in use by another trainer \(pid {os.getpid()} '
                       rf'on host {socket.gethostname()}'):
      workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  with workdir_lock.WorkdirLock(str(tmp_path)):  # Released on exit.
    pass
  assert (tmp_path / workdir_lock.LOCK_FILE).read_text() == ''


def _dead_pid():
  proc = subprocess.Popen([sys.executable, '-c', 'pass'])
  proc.wait()
  return proc.pid


def test_lock_of_a_killed_run_is_taken(tmp_path):
  (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps(
      {'host': socket.gethostname(), 'pid': _dead_pid(), 'started': 0}))
  with test_checkpoint.warnings_logged() as warnings:
    with workdir_lock.WorkdirLock(str(tmp_path)):
      holder = json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())
  assert holder['pid'] == os.getpid()
  assert len(warnings) == 1 and 'which is gone' in warnings[0]


def test_lock_without_flock_decides_by_pid_and_host(tmp_path, monkeypatch):
  def no_flock(*args):
    raise OSError(errno.ENOLCK, 'No locks available')

  monkeypatch.setattr(workdir_lock.fcntl, 'flock', no_flock)
  path = tmp_path / workdir_lock.LOCK_FILE
  path.write_text(json.dumps({'host': 'elsewhere', 'pid': 1}))
  with pytest.raises(workdir_lock.WorkdirLockedError,
                     match=f'pid 1 on host elsewhere.*delete {path}'):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  path.write_text(json.dumps({'host': socket.gethostname(),
                              'pid': os.getppid()}))
  with pytest.raises(workdir_lock.WorkdirLockedError,
                     match=f'pid {os.getppid()}'):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  path.write_text(json.dumps({'host': socket.gethostname(),
                              'pid': _dead_pid()}))
  with workdir_lock.WorkdirLock(str(tmp_path)):
    assert json.loads(path.read_text())['pid'] == os.getpid()


def test_second_trainer_on_a_workdir_fails_at_once(data_dir, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  lock_file = tmp_path / workdir_lock.LOCK_FILE
  first = subprocess.Popen(
      _train_command(tmp_path, data_dir, '--config.num_train_steps=100000'),
      cwd=_REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
      text=True)
  try:
    deadline = time.monotonic() + 300
    # The lock is taken before the data are read or anything compiles.
    while not (lock_file.exists() and lock_file.read_text()):
      assert first.poll() is None, first.stderr.read()[-3000:]
      assert time.monotonic() < deadline, 'the first trainer did not start'
      time.sleep(0.1)
    second = subprocess.run(
        _train_command(tmp_path, data_dir, '--config.num_train_steps=3'),
        cwd=_REPO, env=env, capture_output=True, text=True, timeout=300)
    assert first.poll() is None  # Untouched by the second.
  finally:
    first.kill()
    first.communicate()
  assert second.returncode == 1
  last_line = second.stderr.strip().splitlines()[-1]
  assert last_line.startswith(f'train: {tmp_path} is in use by another '
                              f'trainer (pid {first.pid} on host '), last_line
  assert 'Traceback' not in second.stderr
  assert 'Mesh ' not in second.stderr  # Refused before any set-up.
  assert json.loads(lock_file.read_text())['pid'] == first.pid


# 2. A damaged newest checkpoint.


def test_truncated_newest_checkpoint_resumes_from_the_previous(
    tiny_run, data_dir, tmp_path):
  workdir = _copy_run(tiny_run, tmp_path)
  for path in (workdir / 'checkpoints' / '4' / 'state' / 'd').iterdir():
    path.write_bytes(path.read_bytes()[:100])
  with test_checkpoint.warnings_logged() as warnings:
    state = train_lib.train_and_evaluate(_lesions_config(data_dir),
                                         str(workdir))
  unreadable = [w for w in warnings if 'unreadable' in w]
  assert len(unreadable) == 1 and unreadable[0].startswith(
      'checkpoint 4 is unreadable: OUT_OF_RANGE')
  assert unreadable[0].endswith('resuming from 2.')
  assert (workdir / 'checkpoints_unreadable' / '4').is_dir()
  # Steps 3 and 4 again, exactly as the first time.
  np.testing.assert_array_equal(_flat(state.trainable),
                                _flat(tiny_run[1].trainable))
  assert checkpointing.Checkpointer(
      str(workdir / 'checkpoints')).all_steps() == [2, 4]


# 3. Config drift on resume.


@pytest.mark.parametrize('change, keys', [
    ({'model.channels_per_level': (8, 8, 8)}, 'model.channels_per_level'),
    ({'batch_size': 4}, 'batch_size: 2 -> 4'),
])
def test_resume_refuses_changes_of_shapes_or_objective(
    tiny_run, data_dir, tmp_path, change, keys):
  workdir = _copy_run(tiny_run, tmp_path)
  config = _lesions_config(data_dir, num_train_steps=6)
  for key, value in change.items():
    parent, _, name = key.rpartition('.')
    (config[parent] if parent else config)[name] = value
  with pytest.raises(config_checks.ConfigDriftError,
                     match=f'step 4 was trained with other settings '
                     f'.*{keys}'):
    train_lib.train_and_evaluate(config, str(workdir))
  assert json.loads((workdir / 'config.json').read_text())['batch_size'] == 2
  assert checkpointing.Checkpointer(
      str(workdir / 'checkpoints')).all_steps() == [2, 4]


def test_resume_drift_is_one_line_on_the_command_line(tiny_run, data_dir,
                                                      tmp_path):
  workdir = _copy_run(tiny_run, tmp_path)
  run = subprocess.run(
      _train_command(workdir, data_dir, '--config.seed=1'), cwd=_REPO,
      env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True,
      text=True, timeout=300)
  assert run.returncode == 1
  assert 'Traceback' not in run.stderr and 'strict' not in run.stderr
  assert run.stderr.strip().splitlines()[-1].startswith(
      'train: the checkpoint at step 4 was trained with other settings '
      '(seed: 0 -> 1)'), run.stderr[-2000:]


def test_safe_changes_resume_and_every_config_is_kept(tiny_run, data_dir,
                                                      tmp_path):
  workdir = _copy_run(tiny_run, tmp_path)
  with test_checkpoint.warnings_logged() as warnings:
    train_lib.train_and_evaluate(
        _lesions_config(data_dir, num_train_steps=5, log_every_steps=5),
        str(workdir))
  assert any('Resuming from step 4 with changed settings: '
             'log_every_steps: 1 -> 5, num_train_steps: 4 -> 5' in w
             for w in warnings), warnings
  first = json.loads((workdir / 'config.0.json').read_text())
  assert first['num_train_steps'] == 4
  assert json.loads((workdir / 'config.4.json').read_text())[
      'num_train_steps'] == 5
  assert json.loads((workdir / 'config.json').read_text())[
      'num_train_steps'] == 5
  assert run_record.read_finished(str(workdir))['step'] == 5


def test_config_hash_ignores_only_resume_safe_keys():
  config = synthetic_lesions.get_config('tiny')
  base = run_record.config_hash(config)
  for key, value in (('num_train_steps', 99), ('compilation_cache_dir', '/x'),
                     ('eval.num_samples', 7), ('data.data_dir', '/d')):
    changed = synthetic_lesions.get_config('tiny')
    parent, _, name = key.rpartition('.')
    (changed[parent] if parent else changed)[name] = value
    assert run_record.config_hash(changed) == base, key
  for key, value in (('batch_size', 3), ('loss.kappa', 0.5),
                     ('data.builder_config', 'default')):
    changed = synthetic_lesions.get_config('tiny')
    parent, _, name = key.rpartition('.')
    (changed[parent] if parent else changed)[name] = value
    assert run_record.config_hash(changed) != base, key


# 4. The run's own records: finished.json and the evaluation's step.


def test_finished_record_and_metrics_name_step_and_config(tiny_run, data_dir,
                                                          tmp_path):
  workdir = tiny_run[0]
  config = _lesions_config(data_dir)
  record = run_record.read_finished(str(workdir))
  assert {k: record[k] for k in ('step', 'config_hash')} == {
      'step': 4, 'config_hash': run_record.config_hash(config)}
  # A 4-step run is shorter than the convergence window: not judged.
  assert record['converged'] is False
  assert record['convergence']['reason'].startswith('not judged')
  # A run resumed past its end loses the record until it completes.
  run_record.clear_finished(str(tmp_path))
  assert run_record.read_finished(str(tmp_path)) is None


# 5. Values checked before heavy work.


@pytest.mark.parametrize('key, value, message', [
    ('checkpoints_to_keep', 0, 'checkpoints_to_keep must be >= 1'),
    ('loss.kappa', -0.1, 'kappa must be >= 0'),
    ('loss.geco_decay', 1.0, r'geco_decay must be in \[0, 1\)'),
    ('loss.geco_decay', -0.5, r'geco_decay must be in \[0, 1\)'),
    ('optimizer.learning_rates', (1e-3, -1e-4),
     r'learning_rates must be finite numbers > 0 .*got \(0.001, -0.0001\)'),
    ('optimizer.learning_rates', (float('nan'), float('nan')),
     'learning_rates must be finite'),
    ('optimizer.learning_rates', ('(nan,nan)',),  # What the flag parser makes.
     'learning_rates must be finite numbers > 0'),
    ('optimizer.learning_rates', (1e-3,), r'needs len\(boundaries\) \+ 1 = 2'),
    ('optimizer.b2', 1.0, r'optimizer.b2 must be a number in \[0, 1\)'),
    ('loss.kappa', float('nan'), 'config.loss.kappa must be finite, got nan'),
    ('loss.top_k_fraction', 2.0,
     r'loss.top_k_fraction must be a number in \[0, 1\], got 2.0'),
    ('loss.top_k_fraction', -0.1,
     r'loss.top_k_fraction must be a number in \[0, 1\], got -0.1'),
    ('augment.scale_range', (1.2, 0.8), 'scale_range must be'),
    ('augment.rotation_degrees', float('inf'),
     'augment.rotation_degrees must be finite'),
    ('eval.num_examples', -3, 'num_examples must be None .* got -3'),
    ('eval.num_samples', -5, 'eval.num_samples must be an integer >= 0'),
    ('optimizer.clip_global_norm', 0.0,
     'clip_global_norm must be None .* or a finite number > 0, got 0.0'),
    ('optimizer.clip_global_norm', float('inf'),
     'clip_global_norm must be None .* or a finite number > 0, got inf'),
])
def test_out_of_range_values_fail_before_training(tmp_path, key, value,
                                                  message):
  config = synthetic_lesions.get_config('tiny')
  parent, _, name = key.rpartition('.')
  (config[parent] if parent else config)[name] = value
  with pytest.raises(config_checks.ConfigError, match=message):
    train_lib.train_and_evaluate(config, str(tmp_path))
  assert not os.listdir(tmp_path)  # Nothing written, not even a lock.


def test_image_size_larger_than_the_data_fails(data_dir, tmp_path):
  config = _lesions_config(data_dir, image_size=(64, 64))
  with pytest.raises(config_checks.ConfigError,
                     match=r'image_size \(64, 64\) is larger than the stored '
                     r'images \(32, 32\) of synthetic_lesions/tiny'):
    train_lib.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / 'checkpoints').exists()


def test_unknown_override_key_names_the_nearest_keys(tmp_path):
  config_file = 'experiments/synthetic_lesions.py:tiny'
  assert config_checks.unknown_override(
      ['train', f'--config={config_file}', '--config.loss.kapa=1']) == (
          "--config.loss.kapa: config.loss has no key 'kapa'; nearest keys: "
          'kappa.')
  assert config_checks.unknown_override(
      ['train', '--config', config_file, '--config.loss.kapa', '1']) == (
          "--config.loss.kapa: config.loss has no key 'kapa'; nearest keys: "
          'kappa.')
  assert config_checks.unknown_override(
      ['train', f'--config={config_file}', '--config.loss.kappa=1']) is None
  run = subprocess.run(
      [sys.executable, '-m', 'experiments.train', f'--config={config_file}',
       f'--workdir={tmp_path}', '--config.modle.foo=3'], cwd=_REPO,
      env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True,
      text=True, timeout=300)
  assert run.returncode == 1 and 'Traceback' not in run.stderr
  assert run.stderr.strip().splitlines() == [
      "train: --config.modle.foo: the config has no key 'modle'; nearest "
      'keys: model, model_type.']


def test_nan_before_the_first_checkpoint_promises_none(data_dir, tmp_path,
                                                       monkeypatch):
  helpers.poison_train_batches(monkeypatch, nan_draw=2)  # Step 1's batch.
  with pytest.raises(train_lib.NonFiniteLossError,
                     match='at step 1 .*No checkpoint was saved before it'):
    train_lib.train_and_evaluate(_lesions_config(data_dir), str(tmp_path))
  assert not checkpointing.Checkpointer(
      str(tmp_path / 'checkpoints')).all_steps()
  assert run_record.read_finished(str(tmp_path)) is None


def test_a_file_as_workdir_is_one_error(tmp_path):
  path = tmp_path / 'file'
  path.write_text('')
  with pytest.raises(workdir_lock.WorkdirError,
                     match=f'workdir {path} is a file, not a folder'):
    workdir_lock.WorkdirLock(str(path)).acquire()
