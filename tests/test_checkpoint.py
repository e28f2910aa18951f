"""Orbax checkpointing of the train state, loader state and config, and the
fallback past damaged checkpoints."""
import contextlib
import json

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hpunet_jax.runtime import checkpointing
from experiments import sharding
from experiments import train_step


@contextlib.contextmanager
def warnings_logged():
  """Collects the absl WARNING messages logged inside the block."""
  messages = []

  class Collect(logging.logging.Handler):

    def emit(self, record):
      if record.levelno >= logging.logging.WARNING:
        messages.append(record.getMessage())

  handler = Collect()
  logger = logging.get_absl_logger()
  logger.addHandler(handler)
  try:
    yield messages
  finally:
    logger.removeHandler(handler)


def _state(seed: int) -> train_step.TrainState:
  rng = np.random.default_rng(seed)
  trainable = {'model': {'conv': {'w': jnp.asarray(rng.normal(size=(3, 3, 2)),
                                                   jnp.float32),
                                  'b': jnp.zeros((2,), jnp.float32)}},
               'geco': {'v': jnp.float32(0.5)}}
  optimizer = optax.adam(1e-3)
  return train_step.TrainState(
      step=jnp.int32(seed), trainable=trainable,
      opt_state=optimizer.init(trainable),
      geco_state={'ma': jnp.float32(seed)},
      rng=jax.random.PRNGKey(seed))


def _abstract(state, mesh):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=sharding.replicated(mesh)),
      state)


@pytest.mark.parametrize('loader_state', [
    b'{"last_seen_indices": {"0": 7}}', {'epoch': 1, 'index': [3, 4]}])
def test_save_restore_roundtrip(tmp_path, loader_state):
  mesh = sharding.make_mesh((1, 1))
  checkpointer = checkpointing.Checkpointer(str(tmp_path / 'ckpt'))
  assert checkpointer.latest_step() is None
  state = _state(3)
  checkpointer.save(3, state, loader_state, json.dumps({'seed': 3}))
  checkpointer.wait_until_finished()
  assert checkpointer.latest_step() == 3

  restored, restored_loader = checkpointer.restore(3, _abstract(state, mesh))
  assert restored_loader == loader_state
  assert isinstance(restored, train_step.TrainState)
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(got, want)
    assert got.dtype == want.dtype
    assert got.sharding == sharding.replicated(mesh)
  assert checkpointer.restore_config(3) == {'seed': 3}
  with warnings_logged() as warnings:
    trainable = checkpointer.restore_trainable(3)  # Evaluation's read.
  assert not warnings  # predict and run_metrics print what is logged.
  assert jax.tree.structure(trainable) == jax.tree.structure(state.trainable)
  for got, want in zip(jax.tree.leaves(trainable),
                       jax.tree.leaves(state.trainable)):
    assert isinstance(got, np.ndarray) and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
  checkpointer.close()


def test_restore_trainable_checks_only_what_it_reads(tmp_path):
  """Non-finite Adam moments refuse the train state but not the
  parameters; non-finite parameters refuse both."""
  checkpointer = checkpointing.Checkpointer(str(tmp_path))
  moments_only = _state(1)
  moments_only = moments_only._replace(opt_state=jax.tree.map(
      lambda x: jnp.full_like(x, jnp.nan) if x.dtype == jnp.float32 else x,
      moments_only.opt_state))
  checkpointer.save(1, moments_only, b'{}', '{}')
  checkpointer.wait_until_finished()
  with pytest.raises(checkpointing.NonFiniteCheckpointError):
    checkpointer.restore_saved_state(1)
  np.testing.assert_array_equal(
      checkpointer.restore_trainable(1)['model']['conv']['w'],
      moments_only.trainable['model']['conv']['w'])
  checkpointer.close()
  bad = _with_non_finite_newest(tmp_path / 'bad')
  with pytest.raises(checkpointing.NonFiniteCheckpointError,
                     match=r'/2 holds non-finite values \(2 of 21 values are '
                     r'NaN or infinite, first in trainable/model/conv/w\)'):
    bad.restore_trainable(2)
  bad.close()


def test_restore_trainable_of_a_state_without_parameters_says_so(tmp_path):
  checkpointer = checkpointing.Checkpointer(str(tmp_path))
  checkpointer.save(5, {'step': jnp.int32(5)}, b'{}', '{}')
  checkpointer.wait_until_finished()
  with pytest.raises(checkpointing.CheckpointError,
                     match=rf"checkpoint {tmp_path}/5 holds no trained "
                     r"parameters \(its state has \['step'\], no "
                     r"'trainable'\)"):
    checkpointer.restore_trainable(5)
  checkpointer.close()


def test_restore_trainable_of_a_state_saved_as_a_sequence(tmp_path):
  checkpointer = checkpointing.Checkpointer(str(tmp_path))
  state = _state(4)
  checkpointer.save(4, (state.step, state.trainable), b'{}', '{}')
  checkpointer.wait_until_finished()
  np.testing.assert_array_equal(
      checkpointer.restore_trainable(4)['model']['conv']['w'],
      state.trainable['model']['conv']['w'])
  checkpointer.close()


def test_keeps_the_newest_checkpoints(tmp_path):
  checkpointer = checkpointing.Checkpointer(str(tmp_path), max_to_keep=2)
  for step in (1, 2, 3):
    checkpointer.save(step, _state(step), b'{}', '{}')
  checkpointer.wait_until_finished()
  assert checkpointer.all_steps() == [2, 3]
  checkpointer.close()
  # A fresh manager (a restarted run) finds the newest one.
  assert checkpointing.Checkpointer(str(tmp_path)).latest_step() == 3


def test_loader_state_encoding():
  for state in (b'\x00\xffbinary', {'a': [1, 2]}, 'text'):
    encoded = checkpointing.encode_loader_state(state)
    json.dumps(encoded)  # JSON-able.
    assert checkpointing.decode_loader_state(encoded) == state
  with pytest.raises(checkpointing.CheckpointError, match='object'):
    checkpointing.encode_loader_state(object())
  with pytest.raises(checkpointing.CheckpointError, match='encoding'):
    checkpointing.decode_loader_state({'type': 'pickle', 'value': ''})


def _two_checkpoints(directory):
  checkpointer = checkpointing.Checkpointer(str(directory))
  for step in (1, 2):
    checkpointer.save(step, _state(step), b'{"position": %d}' % step,
                      json.dumps({'seed': step}))
  checkpointer.wait_until_finished()
  checkpointer.close()


def _flip_middle_byte(path):
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xff
  path.write_bytes(bytes(data))


# Each damages checkpoint 2 as the probes did; the reason must name
# the damaged file (or what tensorstore found in it).
_DAMAGE = {
    'data_truncated': (lambda d: [p.write_bytes(p.read_bytes()[:100])
                                  for p in (d / 'state' / 'd').iterdir()],
                       'OUT_OF_RANGE'),
    'data_deleted': (lambda d: [p.unlink()
                                for p in (d / 'state' / 'd').iterdir()],
                     'NOT_FOUND'),
    'data_flipped': (lambda d: [_flip_middle_byte(p)
                                for p in (d / 'state' / 'd').iterdir()],
                     'DATA_LOSS'),
    'state_metadata_truncated': (
        lambda d: (d / 'state' / '_METADATA').write_text(
            (d / 'state' / '_METADATA').read_text()[:100]),
        'state/_METADATA is not valid JSON'),
    'loader_metadata_deleted': (
        lambda d: (d / 'loader' / 'metadata').unlink(),
        'loader/metadata is missing'),
    'loader_metadata_truncated': (
        lambda d: (d / 'loader' / 'metadata').write_text('[{"ty'),
        'loader/metadata is not valid JSON'),
    'config_metadata_truncated': (
        lambda d: (d / 'config' / 'metadata').write_text('{"se'),
        'config/metadata is not valid JSON'),
}


@pytest.mark.parametrize('damage', sorted(_DAMAGE))
def test_damaged_newest_checkpoint_falls_back_and_is_moved_aside(
    tmp_path, damage, capfd):
  damage_fn, reason = _DAMAGE[damage]
  directory = tmp_path / 'checkpoints'
  _two_checkpoints(directory)
  damage_fn(directory / '2')
  mesh = sharding.make_mesh((1, 1))
  checkpointer = checkpointing.Checkpointer(str(directory))

  def restore(step):
    checkpointer.restore_config(step)
    return checkpointer.restore(step, _abstract(_state(step), mesh))

  with warnings_logged() as warnings:
    step, (state, loader) = checkpointer.restore_newest(
        restore, move_unreadable=True)
  assert step == 1 and loader == b'{"position": 1}'
  np.testing.assert_array_equal(state.rng, _state(1).rng)
  assert checkpointer.all_steps() == [1]
  checkpointer.close()
  assert len(warnings) == 1, warnings
  assert warnings[0].startswith('checkpoint 2 is unreadable: ')
  assert reason in warnings[0] and warnings[0].endswith('resuming from 1.')
  moved = tmp_path / ('checkpoints' + checkpointing.UNREADABLE_SUFFIX) / '2'
  assert moved.is_dir() and str(moved) in warnings[0]  # Kept, not deleted.
  assert 'Event loop is closed' not in capfd.readouterr().err


def test_no_readable_checkpoint_is_one_error_naming_the_directory(tmp_path):
  directory = tmp_path / 'checkpoints'
  _two_checkpoints(directory)
  for step in ('1', '2'):
    (directory / step / 'loader' / 'metadata').unlink()
  checkpointer = checkpointing.Checkpointer(str(directory))
  mesh = sharding.make_mesh((1, 1))
  with pytest.raises(checkpointing.NoReadableCheckpointError,
                     match=f'no readable checkpoint in {directory}: '
                     'checkpoint 2 is unreadable.*checkpoint 1 is unreadable'):
    checkpointer.restore_newest(
        lambda s: checkpointer.restore(s, _abstract(_state(s), mesh)),
        move_unreadable=False)
  checkpointer.close()
  assert sorted(p.name for p in directory.iterdir()) == ['1', '2']  # Left.


def test_intact_checkpoint_of_other_shapes_is_an_error_not_moved(tmp_path):
  directory = tmp_path / 'checkpoints'
  _two_checkpoints(directory)
  other = _state(2)._replace(rng=jnp.zeros((3,), jnp.uint32))
  checkpointer = checkpointing.Checkpointer(str(directory))
  mesh = sharding.make_mesh((1, 1))
  with pytest.raises(checkpointing.CheckpointError,
                     match=f'checkpoint {directory}/2 does not restore'):
    checkpointer.restore_newest(
        lambda s: checkpointer.restore(s, _abstract(other, mesh)),
        move_unreadable=True)
  assert checkpointer.all_steps() == [1, 2]
  checkpointer.close()


def test_no_checkpoint_restores_nothing(tmp_path):
  checkpointer = checkpointing.Checkpointer(str(tmp_path / 'checkpoints'))
  assert checkpointer.restore_newest(
      lambda s: pytest.fail('nothing to restore'),
      move_unreadable=True) is None
  checkpointer.close()


def _with_non_finite_newest(directory):
  """Checkpoints 1 (finite) and 2 (one NaN and one inf weight)."""
  checkpointer = checkpointing.Checkpointer(str(directory))
  checkpointer.save(1, _state(1), b'{"position": 1}', '{}')
  bad = _state(2)
  w = bad.trainable['model']['conv']['w']
  bad.trainable['model']['conv']['w'] = w.at[0, 0, 0].set(jnp.nan).at[
      1, 1, 1].set(jnp.inf)
  checkpointer.save(2, bad, b'{"position": 2}', '{}')
  checkpointer.wait_until_finished()
  return checkpointer


def test_non_finite_checkpoint_is_refused_naming_step_and_way_back(tmp_path):
  directory = tmp_path / 'checkpoints'
  checkpointer = _with_non_finite_newest(directory)
  mesh = sharding.make_mesh((1, 1))
  # 2 of the 18 + 2 + 1 float values of `trainable`, 18 + 2 + 1 per Adam
  # moment and one GECO average.
  message = (rf'checkpoint {directory}/2 holds non-finite values \(2 of 64 '
             r'values are NaN or infinite, first in trainable/model/conv/w\): '
             r'training had diverged when it was saved\. Use an earlier step '
             r'\(checkpoint 1 is the newest earlier one\)')
  for restore in (
      lambda: checkpointer.restore(2, _abstract(_state(2), mesh)),
      lambda: checkpointer.restore_saved_state(2),
      lambda: checkpointer.restore_newest(checkpointer.restore_saved_state,
                                          move_unreadable=False)):
    with pytest.raises(checkpointing.NonFiniteCheckpointError,
                       match=message):
      restore()
  assert checkpointer.all_steps() == [1, 2]  # Nothing moved.
  checkpointer.close()


def test_resume_falls_back_past_a_non_finite_checkpoint(tmp_path):
  directory = tmp_path / 'checkpoints'
  checkpointer = _with_non_finite_newest(directory)
  mesh = sharding.make_mesh((1, 1))
  with warnings_logged() as warnings:
    step, (_, loader) = checkpointer.restore_newest(
        lambda s: checkpointer.restore(s, _abstract(_state(s), mesh)),
        move_unreadable=True, skip_non_finite=True)
  assert step == 1 and loader == b'{"position": 1}'
  moved = tmp_path / ('checkpoints' + checkpointing.NON_FINITE_SUFFIX) / '2'
  assert warnings == [
      'checkpoint 2 holds non-finite values (2 of 64 values are NaN or '
      f'infinite, first in trainable/model/conv/w) (moved to {moved}); '
      'resuming from 1.']
  assert moved.is_dir() and checkpointer.all_steps() == [1]
  checkpointer.close()
