"""A training loop of one's own on a device mesh: one-device gradients.

The loop (`_custom_gradients`) uses only `jax.set_mesh` and the public model
API (`models.make_model`, `objective.loss_fn`), no trainer code: the model's
feature maps find the mesh themselves (`hpunet_jax.partitioning`). It runs at
the geometry where XLA's partitioner, left alone, computes wrong gradients:
the synthetic-lesions HPU-Net (64x64, 7 levels down to 1x1) with 8 channels
per level and a batch of 8, on the meshes (8, 1), (4, 2), (2, 4), (1, 8) of 8
CPU devices. Those exist only when `XLA_FLAGS` asks for them before JAX
starts, so the cases run in one subprocess (`_cases_main`) whose JSON the
tests read.
"""
import functools
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

_REPO = pathlib.Path(__file__).resolve().parents[1]
_MESHES = ((8, 1), (4, 2), (2, 4), (1, 8))
# A mesh traced with no mesh context, the model reading its inputs' mesh.
_NO_CONTEXT_MESH = (2, 4)
# A mesh whose axes are named otherwise: refused alone, right inside
# `spatial_partitioning` with its names.
_OWN_NAMES_MESH, _OWN_NAMES = (4, 2), ('batch', 'rows')
_BATCH, _CHANNELS = 8, 8
# Each gradient leaf must agree with one device to this relative L2 error.
_GRADIENT_RTOL = 1e-4


def _problem():
  """`(model, loss_config, trainable, geco_state, batch)`: the
  synthetic-lesions config's HPU-Net with `_CHANNELS` per level, a random
  numpy batch of `_BATCH` images."""
  # pylint: disable=g-import-not-at-top
  from experiments import synthetic_lesions
  from hpunet_jax import models
  from hpunet_jax import objective
  # pylint: enable=g-import-not-at-top
  config = synthetic_lesions.get_config()
  num_levels = len(config.model.channels_per_level)
  config.model.channels_per_level = (_CHANNELS,) * num_levels
  height, width = config.image_size
  rng = np.random.default_rng(0)
  batch = {
      'image': rng.normal(size=(_BATCH, height, width, 1)).astype(np.float32),
      'segmentation': (rng.random((_BATCH, height, width)) > 0.7).astype(
          np.int32),
      'mask': np.ones((_BATCH, height, width), np.float32)}
  model = models.make_model(config.model_type, config.model.to_dict())
  loss_config = config.loss.to_dict()
  trainable = objective.init_trainable(
      model, jax.random.PRNGKey(0), batch['image'][:1],
      batch['segmentation'][:1], loss_config)
  return model, loss_config, trainable, objective.init_geco_state(), batch


def _custom_gradients(model, loss_config, trainable, geco_state, batch,
                      mesh=None):
  """The gradient step of a hand-written loop: the batch split over
  (`data`, `spatial`), everything else replicated, traced under
  `jax.set_mesh(mesh)`; `mesh=None`: one device."""
  # pylint: disable=g-import-not-at-top
  from hpunet_jax import objective
  # pylint: enable=g-import-not-at-top
  P = jax.sharding.PartitionSpec  # pylint: disable=invalid-name
  grad_fn = jax.jit(jax.value_and_grad(
      functools.partial(objective.loss_fn, model=model,
                        loss_config=loss_config), has_aux=True))
  if mesh is None:
    return grad_fn(trainable, geco_state, jax.random.PRNGKey(1), batch)
  with jax.set_mesh(mesh):
    batch = jax.device_put(batch, P('data', 'spatial'))
    trainable = jax.device_put(trainable, P())
    return grad_fn(trainable, geco_state, jax.random.PRNGKey(1), batch)


def _relative_errors(got, reference):
  """Relative L2 error per leaf of two pytrees: `{path: error}`."""
  errors = {}
  for (path, ref), value in zip(jax.tree_util.tree_leaves_with_path(reference),
                                jax.tree.leaves(got)):
    ref, value = np.asarray(ref, np.float64), np.asarray(value, np.float64)
    errors[jax.tree_util.keystr(path)] = float(
        np.linalg.norm(value - ref) / max(np.linalg.norm(ref), 1e-30))
  return errors


def _auto_mesh(shape, names=('data', 'spatial')):
  return jax.make_mesh(shape, names,
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def _cases_main():
  """Runs every case on 8 devices; prints `{case: result}` as JSON: a
  case's loss and per-leaf gradient errors, or the refusal's message."""
  # pylint: disable=g-import-not-at-top
  from hpunet_jax import objective
  from hpunet_jax import partitioning
  # pylint: enable=g-import-not-at-top
  model, loss_config, trainable, geco_state, batch = _problem()
  (ref_loss, _), ref_grads = _custom_gradients(
      model, loss_config, trainable, geco_state, batch)
  ref_grads = jax.device_get(ref_grads)
  results = {'reference': {'loss': float(ref_loss)}}

  def record(name, out):
    (loss, _), grads = out
    results[name] = {'loss': float(loss), 'gradient_errors': _relative_errors(
        jax.device_get(grads), ref_grads)}

  for shape in _MESHES:
    record(f'set_mesh {shape}', _custom_gradients(
        model, loss_config, trainable, geco_state, batch, _auto_mesh(shape)))

  # No mesh context: the inputs' own sharding tells the model the mesh.
  mesh = _auto_mesh(_NO_CONTEXT_MESH)
  sharded = jax.device_put(batch, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec('data', 'spatial')))
  grad_fn = jax.value_and_grad(objective.loss_fn, has_aux=True)
  def loss_grads(trainable, batch):
    return grad_fn(trainable, geco_state, jax.random.PRNGKey(1), batch,
                   model=model, loss_config=loss_config)
  record(f'no mesh context {_NO_CONTEXT_MESH}',
         jax.jit(loss_grads)(trainable, sharded))

  # Other axis names: refused at trace time, right when named.
  mesh = _auto_mesh(_OWN_NAMES_MESH, _OWN_NAMES)
  sharded = jax.device_put(batch, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(*_OWN_NAMES)))
  results['refusal'] = _refusal(
      lambda: jax.jit(loss_grads).trace(trainable, sharded))
  def named_loss_grads(trainable, batch):
    with partitioning.spatial_partitioning(mesh, *_OWN_NAMES):
      return loss_grads(trainable, batch)
  record(f'spatial_partitioning {_OWN_NAMES_MESH}',
         jax.jit(named_loss_grads)(trainable, sharded))

  # Explicit axes: JAX's sharding rules and constraints work otherwise there.
  mesh = jax.make_mesh(_NO_CONTEXT_MESH, ('data', 'spatial'), axis_types=(
      jax.sharding.AxisType.Explicit,) * 2)
  with jax.set_mesh(mesh):
    sharded = jax.device_put(batch, jax.sharding.PartitionSpec(
        'data', 'spatial'))
    results['explicit refusal'] = _refusal(
        lambda: jax.jit(loss_grads).trace(trainable, sharded))
  print(json.dumps(results))


def _refusal(trace):
  """The message of the `MeshAxesError` that `trace()` raises, or None."""
  # pylint: disable=g-import-not-at-top
  from hpunet_jax import partitioning
  # pylint: enable=g-import-not-at-top
  try:
    trace()
  except partitioning.MeshAxesError as error:
    return str(error)
  return None


@pytest.fixture(scope='module')
def results():
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=os.environ.get('XLA_FLAGS', '') +
             ' --xla_force_host_platform_device_count=8',
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir
             or '')
  proc = subprocess.run(
      [sys.executable, '-c',
       'from tests import test_custom_loop_sharding as t; t._cases_main()'],
      cwd=_REPO, env=env, capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_gradients(results, name):
  got = results[name]
  bad = {k: v for k, v in got['gradient_errors'].items()
         if not v <= _GRADIENT_RTOL}
  assert not bad, f'{name}: {len(bad)} gradient leaves off: {bad}'
  np.testing.assert_allclose(got['loss'], results['reference']['loss'],
                             rtol=1e-5, err_msg=name)


@pytest.mark.parametrize('shape', _MESHES, ids=str)
def test_set_mesh_loop_gets_one_device_gradients(results, shape):
  _check_gradients(results, f'set_mesh {shape}')


def test_inputs_sharded_without_mesh_context_get_one_device_gradients(
    results):
  _check_gradients(results, f'no mesh context {_NO_CONTEXT_MESH}')


def test_unknown_axis_names_are_refused_then_named(results):
  assert results['refusal'] is not None, 'tracing was not refused'
  for words in ("'batch': 4", "'rows': 2", 'jax.set_mesh(mesh)',
                'spatial_partitioning(mesh'):
    assert words in results['refusal']
  _check_gradients(results, f'spatial_partitioning {_OWN_NAMES_MESH}')


def test_explicit_axes_are_refused(results):
  assert results['explicit refusal'] is not None, 'tracing was not refused'
  assert 'AxisType.Auto' in results['explicit refusal']
