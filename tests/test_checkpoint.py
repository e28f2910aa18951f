"""Orbax checkpointing of the train state, loader state and config."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hpunet_jax.runtime import checkpointing
from experiments import sharding
from experiments import train_lib


def _state(seed: int) -> train_lib.TrainState:
  rng = np.random.default_rng(seed)
  trainable = {'model': {'conv': {'w': jnp.asarray(rng.normal(size=(3, 3, 2)),
                                                   jnp.float32),
                                  'b': jnp.zeros((2,), jnp.float32)}},
               'geco': {'v': jnp.float32(0.5)}}
  optimizer = optax.adam(1e-3)
  return train_lib.TrainState(
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
  assert isinstance(restored, train_lib.TrainState)
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(got, want)
    assert got.dtype == want.dtype
    assert got.sharding == sharding.replicated(mesh)
  assert checkpointer.restore_config(3) == {'seed': 3}
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
