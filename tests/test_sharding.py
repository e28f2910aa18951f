"""Mesh and sharding: shapes, errors, and data x spatial partitioned training.

The partitioned-training test needs 8 CPU devices, which XLA only creates when
`XLA_FLAGS=--xla_force_host_platform_device_count=8` is set before JAX starts:
it runs `_mesh_equivalence_main` in a subprocess.
"""
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import sharding

_REPO = pathlib.Path(__file__).resolve().parents[1]
_MESHES = ((8, 1), (2, 4), (1, 1))
_BATCH, _SIZE, _STEPS = 8, 32, 3


def test_resolve_mesh_shape():
  assert sharding.resolve_mesh_shape((-1, 1), 8) == (8, 1)
  assert sharding.resolve_mesh_shape((2, -1), 8) == (2, 4)
  assert sharding.resolve_mesh_shape([2, 4], 8) == (2, 4)
  for shape, match in (((3, -1), 'cannot cover'), ((2, 2), 'needs 4'),
                       ((-1, -1), 'at most one'), ((0, 8), 'positive'),
                       ((8,), r'\(data, spatial\)')):
    with pytest.raises(sharding.MeshShapeError, match=match):
      sharding.resolve_mesh_shape(shape, 8)


def test_single_device_mesh_and_batch():
  mesh = sharding.make_mesh((-1, 1))
  assert mesh.axis_names == sharding.MESH_AXES
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  local = {'image': np.ones((2, 8, 8, 1), np.float32),
           'segmentation': np.zeros((2, 8, 8), np.int32)}
  batch = sharding.global_batch(mesh, local)
  assert batch['image'].shape == (2, 8, 8, 1)
  assert batch['image'].sharding.spec == jax.sharding.PartitionSpec(
      'data', 'spatial', None, None)
  np.testing.assert_array_equal(batch['segmentation'], local['segmentation'])


def test_divisibility_errors():
  class _FakeMesh:
    shape = {'data': 2, 'spatial': 4}
  sharding.check_batch_divisible(_FakeMesh(), 4, (8, 8))
  with pytest.raises(sharding.MeshShapeError, match='batch_size 3'):
    sharding.check_batch_divisible(_FakeMesh(), 3, (8, 8))
  with pytest.raises(sharding.MeshShapeError, match='height 6'):
    sharding.check_batch_divisible(_FakeMesh(), 4, (6, 8))


def _mesh_equivalence_main():
  """Trains a few steps on each mesh; prints losses, params and HLO facts."""
  # pylint: disable=g-import-not-at-top
  from experiments import synthetic_lesions
  from experiments import train_lib
  from hpunet_jax import models
  # pylint: enable=g-import-not-at-top
  config = synthetic_lesions.get_config('tiny')
  config.model.channels_per_level = (4, 4, 4)
  config.model.latent_dims = (1,)
  config.model.convs_per_block = 1
  model = models.make_model(config.model_type, config.model.to_dict())
  optimizer, schedule = train_lib.make_optimizer(config.optimizer.to_dict())
  rng = np.random.default_rng(0)
  batch = {
      'image': rng.normal(size=(_BATCH, _SIZE, _SIZE, 1)).astype(np.float32),
      'segmentation': (rng.random((_BATCH, _SIZE, _SIZE)) > 0.7).astype(
          np.int32),
      'mask': np.ones((_BATCH, _SIZE, _SIZE), np.float32)}
  init_batch = {k: v[:1] for k, v in batch.items()}
  # One initialisation (Haiku's orthogonal init is slow to compile), kept on
  # the host and copied onto each mesh (the step donates its input state).
  initial_state = jax.device_get(jax.jit(lambda r: train_lib.init_train_state(
      r, init_batch, model=model, optimizer=optimizer,
      loss_config=config.loss.to_dict()))(jax.random.PRNGKey(0)))
  results = {}
  for shape in _MESHES:
    mesh = sharding.make_mesh(shape, devices=jax.devices()[:np.prod(shape)])
    state = jax.device_put(initial_state, sharding.replicated(mesh))
    global_batch = sharding.global_batch(mesh, batch)
    step = train_lib.make_train_step(
        model=model, optimizer=optimizer, schedule=schedule,
        loss_config=config.loss.to_dict(),
        augment_config=config.augment.to_dict(), mesh=mesh,
        batch_example=global_batch, eigen_conv=config.xla_cpu_eigen_conv)
    compiled = step.lower(state, global_batch).compile()
    hlo = compiled.as_text()
    losses = []
    for _ in range(_STEPS):
      state, scalars = compiled(state, global_batch)
      losses.append(float(scalars['loss']))
    params = np.concatenate([np.ravel(x) for x in
                             jax.tree.leaves(state.trainable)])
    # Output shapes of the convolutions each device runs: [b, h, w, c].
    conv_shapes = sorted(set(re.findall(
        r'f32\[(\d+),(\d+),(\d+),\d+\]\S* convolution\(', hlo)))
    results[str(shape)] = {'losses': losses, 'params': params.tolist(),
                           'conv_shapes': conv_shapes}
  print(json.dumps(results))


def test_meshes_agree_and_partition_the_height():
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir
             or '')
  proc = subprocess.run(
      [sys.executable, '-c',
       'from tests import test_sharding; '
       'test_sharding._mesh_equivalence_main()'],
      cwd=_REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(proc.stdout.strip().splitlines()[-1])
  reference = results[str((1, 1))]
  for shape in _MESHES:
    got = results[str(shape)]
    np.testing.assert_allclose(got['losses'], reference['losses'], atol=1e-5,
                               rtol=1e-5, err_msg=f'mesh {shape}')
    np.testing.assert_allclose(got['params'], reference['params'], atol=1e-5,
                               err_msg=f'mesh {shape}')
  # On (2, 4) each device convolves 8 / 2 = 4 images of height 32 / 4 = 8 at
  # full resolution: the height really is split, not gathered.
  full_res = [tuple(map(int, s)) for s in results[str((2, 4))]['conv_shapes']
              if int(s[2]) == _SIZE]
  assert full_res and all(s[:2] == (_BATCH // 2, _SIZE // 4)
                          for s in full_res), full_res
  # On one device the same convolutions see the whole batch and height.
  assert (_BATCH, _SIZE, _SIZE) in [
      tuple(map(int, s)) for s in reference['conv_shapes']]
