"""Task configs: variants load, carry the paper's settings and build models."""
import importlib

from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import pytest

from datasets import pipeline
from experiments import config_common
from experiments import train_step
from hpunet_jax import models

TASKS = ('synthetic_lesions', 'synthetic_cells', 'lidc', 'lidc_v1', 'snemi3d',
         'cityscapes')
REQUIRED_KEYS = ('seed', 'image_size', 'batch_size', 'num_train_steps',
                 'log_every_steps', 'checkpoint_every_steps', 'mesh_shape',
                 'model_type', 'model', 'loss', 'optimizer', 'data', 'augment',
                 'eval')


def _module(task):
  return importlib.import_module(f'experiments.{task}')


def _all_args():
  for task in TASKS:
    for variant in _module(task).VARIANTS:
      for suffix in ('', ',tiny'):
        yield task, variant + suffix


@pytest.mark.parametrize('task,arg', list(_all_args()))
def test_config_is_complete_and_consistent(task, arg):
  config = _module(task).get_config(arg)
  config.lock()
  for key in REQUIRED_KEYS:
    assert key in config, f'{task}:{arg} lacks {key}'
  assert len(config.image_size) == 2 and len(config.mesh_shape) == 2
  # The schedule must be usable as written.
  schedule = train_step.make_learning_rate_schedule(
      config.optimizer.boundaries, config.optimizer.learning_rates)
  assert float(schedule(0)) == pytest.approx(config.optimizer.learning_rates[0])
  # The data set's classes are the model's classes, the crop is the model's
  # input size.
  assert pipeline.num_classes(config.data) == config.model.num_classes
  assert tuple(config.augment.crop_size) == tuple(config.image_size)
  # Gradient clipping is off in every config (the paper clips none).
  assert config.optimizer.clip_global_norm is None
  assert config.model_type in ('hpunet', 'spunet')
  assert config.loss.objective == ('elbo' if config.model_type == 'spunet'
                                   else 'geco')


@pytest.mark.parametrize('task,arg', [
    (task, variant) for task in TASKS for variant in _module(task).VARIANTS])
def test_full_size_models_build(task, arg):
  """Every paper-size model traces at its image size (shapes only)."""
  config = _module(task).get_config(arg)
  model = models.make_model(config.model_type, config.model.to_dict())
  height, width = config.image_size
  image = jax.ShapeDtypeStruct((1, height, width,
                                config.model.num_input_channels), jnp.float32)
  segmentation = jax.ShapeDtypeStruct((1, height, width), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), image,
                          segmentation)
  out = jax.eval_shape(model.train_forward, params, jax.random.PRNGKey(0),
                       image, segmentation)
  assert out.logits.shape == (1, height, width, config.model.num_classes)


def test_lidc_settings_follow_the_paper():
  config = _module('lidc').get_config('hpunet')
  assert config.model.channels_per_level == (24, 48, 96, 192, 192, 192, 192,
                                             192)
  assert config.model.latent_dims == (1, 1, 1, 1)
  assert (config.model.blocks_per_level, config.model.convs_per_block) == (3, 3)
  assert (config.batch_size, config.num_train_steps) == (32, 240_000)
  assert config.loss.kappa == 0.05 and config.loss.top_k_fraction == 0.02
  assert config.loss.weight_decay == 1e-5
  assert config.optimizer.learning_rates[0] == pytest.approx(1e-4)
  assert config.optimizer.learning_rates[-1] == pytest.approx(5e-6)
  assert len(config.optimizer.boundaries) == 4
  assert _module('lidc').get_config('global_latents').loss.kappa == 0.15
  assert _module('lidc').get_config('no_topk').loss.top_k_fraction == 0.0
  spunet = _module('lidc').get_config('spunet')
  assert spunet.model.latent_dim == 6 and spunet.loss.beta == 1.0
  assert len(spunet.model.channels_per_level) == 5


def test_snemi3d_and_cityscapes_settings_follow_the_paper():
  snemi = _module('snemi3d').get_config('hpunet')
  assert snemi.model.channels_per_level == (32, 64, 128, 256, 256, 256, 256,
                                            256, 256)
  assert (snemi.batch_size, snemi.num_train_steps) == (24, 450_000)
  assert snemi.model.num_classes == 16 and snemi.loss.kappa == 1.20
  assert snemi.optimizer.learning_rates[-1] == pytest.approx(1e-7)
  assert len(snemi.optimizer.boundaries) == 5
  assert _module('snemi3d').get_config('spunet').model.latent_dim == 85
  city = _module('cityscapes').get_config()
  assert city.image_size == (512, 1024) and city.model.blocks_per_level == 2
  assert (city.batch_size, city.num_train_steps) == (128, 100_000)
  assert city.optimizer.boundaries == (70_000,)
  assert city.optimizer.learning_rates == (2e-4, 1e-4)
  assert city.loss.kappa == 0.77 and city.model.num_classes == 23


def test_parse_arg():
  variants = ('hpunet', 'spunet')
  assert config_common.parse_arg(None, variants, 'hpunet') == ('hpunet', False)
  assert config_common.parse_arg('spunet,tiny', variants,
                                 'hpunet') == ('spunet', True)
  assert config_common.parse_arg('tiny', variants, 'hpunet') == ('hpunet',
                                                                  True)
  for bad in ('unet', 'hpunet,spunet', 'tiny,tiny'):
    with pytest.raises(ValueError, match='config argument'):
      config_common.parse_arg(bad, variants, 'hpunet')


def test_geometric_schedule_and_channels():
  boundaries, values = config_common.geometric_schedule(1e-4, 1e-7, 3, 400)
  assert boundaries == (100, 200, 300)
  np.testing.assert_allclose(values, (1e-4, 1e-5, 1e-6, 1e-7), rtol=1e-9)
  assert config_common.doubling_channels(24, 6) == (24, 48, 96, 192, 192, 192)


def test_command_line_overrides():
  argv = ['train', '--config=experiments/lidc.py:tiny',
          '--config.mesh_shape=(2,4)', '--config.num_train_steps=200',
          '--config.image_size=(64,64)',
          '--config.optimizer.learning_rates=(1e-3,1e-4)']
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'test', flag_values,
                                  lock_config=True, sys_argv=argv)
  flag_values(argv)
  config = flag_values.config
  assert config.mesh_shape == (2, 4) and config.num_train_steps == 200
  # The crop follows image_size: it is a reference, not a copy.
  assert tuple(config.augment.crop_size) == (64, 64)
  assert config.optimizer.learning_rates == (1e-3, 1e-4)


def test_learning_rate_schedule():
  schedule = train_step.make_learning_rate_schedule((10, 20), (1.0, 0.5, 0.1))
  got = [float(schedule(s)) for s in (0, 9, 10, 19, 20, 1000)]
  np.testing.assert_allclose(got, (1.0, 1.0, 0.5, 0.5, 0.1, 0.1))
  with pytest.raises(ValueError, match='len\\(boundaries\\) \\+ 1'):
    train_step.make_learning_rate_schedule((10,), (1.0,))
  with pytest.raises(ValueError, match='must increase'):
    train_step.make_learning_rate_schedule((10, 5), (1.0, 0.5, 0.1))


def test_lidc_v1_is_the_paper_lidc_setup_at_128_on_the_v1_data():
  for variant in ('hpunet', 'spunet'):
    config = _module('lidc_v1').get_config(variant)
    paper = _module('lidc').get_config(variant)
    assert config.data.name == 'lidc_v1'
    assert config.data.builder_config == 'pickle'
    assert config.image_size == (128, 128)
    for key in ('model_type', 'model', 'loss', 'optimizer', 'augment', 'eval',
                'batch_size', 'num_train_steps'):
      assert config[key] == paper[key], key


def test_synthetic_lesion_ablations_get_the_hierarchys_reconstruction():
  """docs/synthetic_study.md, "The ablations' kappa": the hierarchy's
  kappa for the top-k ablations, its all-pixel reconstruction for no_topk."""
  lesions = _module('synthetic_lesions')
  hpunet = lesions.get_config('hpunet').loss
  assert hpunet.kappa == 0.25 and hpunet.top_k_fraction == 0.02
  for variant in ('global_latents', 'local_latents'):
    loss = lesions.get_config(variant).loss
    assert (loss.kappa, loss.top_k_fraction) == (0.25, 0.02), variant
    assert loss.geco_multiplier_rate_down == hpunet.geco_multiplier_rate_down
  no_topk = lesions.get_config('no_topk').loss
  assert (no_topk.kappa, no_topk.top_k_fraction) == (0.0044, 0.0)
