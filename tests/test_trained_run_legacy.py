"""`hpunet_jax.load` on run folders written by older code."""
import json

import jax
import ml_collections
import numpy as np

import hpunet_jax
from hpunet_jax import trained_run
from hpunet_jax import models
from hpunet_jax.runtime import checkpointing
from tests import test_checkpoint
from tests.test_model import TINY_SPUNET


def _old_spunet_run(workdir):
  """A checkpoint of an sPU-Net whose saved config predates, and so lacks,
  model.weight_init and model.up_sampling; returns its params."""
  old_fields = {k: v for k, v in TINY_SPUNET.items()
                if k not in trained_run.SPUNET_LEGACY_FIELDS}
  model = models.make_model(
      'spunet', dict(old_fields, **trained_run.SPUNET_LEGACY_FIELDS))
  image = np.zeros((1, 16, 16, 1), np.float32)
  params = model.init(jax.random.PRNGKey(0), image,
                      np.zeros((1, 16, 16), np.int32))
  checkpointer = checkpointing.Checkpointer(
      str(workdir / checkpointing.CHECKPOINT_DIR), use_async=False)
  checkpointer.save(7, {'trainable': {'model': params}}, b'{}', json.dumps(
      {'model_type': 'spunet', 'model': old_fields, 'image_size': [16, 16]}))
  checkpointer.close()
  return model, params


def test_old_spunet_config_gets_the_fields_of_the_code_that_wrote_it(
    tmp_path):
  model, params = _old_spunet_run(tmp_path)
  with test_checkpoint.warnings_logged() as messages:
    run = hpunet_jax.load(str(tmp_path))
  assert run.step == 7
  assert (run.config.model.weight_init, run.config.model.up_sampling) == (
      'orthogonal', 'nearest')
  assert [m for m in messages if 'predates model.weight_init and '
          "model.up_sampling; using weight_init='orthogonal', "
          "up_sampling='nearest'" in m] != []
  image = np.random.default_rng(0).normal(size=(1, 16, 16, 1)).astype(
      np.float32)
  segmentation = np.zeros((1, 16, 16), np.int32)
  np.testing.assert_array_equal(
      run.model.reconstruct(run.params, image, segmentation),
      model.reconstruct(params, image, segmentation))


def test_current_configs_are_left_alone():
  config = ml_collections.ConfigDict(
      {'model_type': 'spunet', 'model': dict(TINY_SPUNET)})
  trained_run.fill_old_spunet_fields(config, 'x')
  assert config.model.to_dict() == TINY_SPUNET
  hpunet = ml_collections.ConfigDict(
      {'model_type': 'hpunet', 'model': {'num_classes': 2}})
  trained_run.fill_old_spunet_fields(hpunet, 'x')
  assert hpunet.model.to_dict() == {'num_classes': 2}
