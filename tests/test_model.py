"""Shapes, parameter trees, validation and sampling of the model core."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpunet_jax import models

LIDC_HPUNET = dict(channels_per_level=(24, 48, 96, 192, 192, 192, 192, 192),
                   latent_dims=(1, 1, 1, 1), num_classes=2,
                   blocks_per_level=3, convs_per_block=3)
TINY_HPUNET = dict(channels_per_level=(8, 8, 16, 16, 16), latent_dims=(1, 2),
                   num_classes=3, blocks_per_level=1, convs_per_block=2)
TINY_SPUNET = dict(channels_per_level=(8, 8, 16), convs_per_level=1,
                   latent_dim=3, num_classes=3, num_comb_convs=3,
                   weight_init='he_normal', up_sampling='bilinear')


def _inputs(size, batch=2, channels=1, num_classes=3, seed=0):
  rng = np.random.default_rng(seed)
  image = jnp.asarray(rng.normal(size=(batch, size, size, channels)),
                      jnp.float32)
  seg = jnp.asarray(rng.integers(0, num_classes, (batch, size, size)),
                    jnp.int32)
  return image, seg


def test_lidc_default_shapes_at_128():
  model = models.make_model('hpunet', LIDC_HPUNET)
  image, seg = _inputs(128, batch=2, num_classes=2)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), image, seg)
  out = jax.eval_shape(model.train_forward, params, jax.random.PRNGKey(0),
                       image, seg)
  assert out.logits.shape == (2, 128, 128, 2)
  assert out.kl_per_level.shape == (4,)
  grids = [d.mean.shape for d in out.prior]
  assert grids == [(2, 1, 1, 1), (2, 2, 2, 1), (2, 4, 4, 1), (2, 8, 8, 1)]
  assert [d.log_std.shape for d in out.posterior] == grids
  assert model.num_latent_levels == 4
  samples = jax.eval_shape(
      lambda p, k, x: model.sample(p, k, x, 5), params,
      jax.random.PRNGKey(0), image)
  assert samples.shape == (5, 2, 128, 128, 2)
  # The paper's widths: 24 at full resolution, 192 at the 1x1 bottom.
  first = params['hpunet/~/prior/~encode/encoder_level0_block0/conv1x1_out']
  bottom = params['hpunet/~/prior/~encode/encoder_level7_block2/conv1x1_out']
  assert first['w'].shape == (1, 1, 12, 24)
  assert bottom['w'].shape == (1, 1, 96, 192)


def test_posterior_sees_one_hot_and_image():
  model = models.make_model('hpunet', TINY_HPUNET)
  image, seg = _inputs(16, channels=2)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), image, seg)
  stem = params['hpunet/~/posterior/~encode/encoder_level0_block0/'
                'skip_projection']
  assert stem['w'].shape == (1, 1, 3 + 2, 8)  # one-hot (K=3) + image (2).


def test_tiny_shapes_and_ablation_options():
  image, seg = _inputs(16)
  for latent_dims, grids in [((1, 2), [(1, 1, 1), (2, 2, 2)]),
                             ((4,), [(1, 1, 4)]),        # global only
                             ((0, 1), [(2, 2, 1)])]:     # local only
    kwargs = dict(TINY_HPUNET, latent_dims=latent_dims)
    model = models.make_model('hpunet', kwargs)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), image, seg)
    out = jax.eval_shape(model.train_forward, params, jax.random.PRNGKey(0),
                         image, seg)
    assert out.logits.shape == (2, 16, 16, 3)
    assert [d.mean.shape[1:] for d in out.prior] == grids
    assert model.num_latent_levels == len(grids)


def test_spunet_shapes():
  model = models.make_model('spunet', TINY_SPUNET)
  image, seg = _inputs(16)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), image, seg)
  out = jax.eval_shape(model.train_forward, params, jax.random.PRNGKey(0),
                       image, seg)
  assert out.logits.shape == (2, 16, 16, 3)
  assert out.prior[0].mean.shape == (2, 1, 1, 3)
  assert model.num_latent_levels == 1
  assert any('posterior_net' in name for name in params)


@pytest.mark.parametrize('model_type,kwargs', [('hpunet', TINY_HPUNET),
                                               ('spunet', TINY_SPUNET)])
def test_invalid_size_is_a_clear_error(model_type, kwargs):
  model = models.make_model(model_type, kwargs)
  image, seg = _inputs(10)  # 10 does not halve 4 (or 2) times.
  with pytest.raises(ValueError, match='does not halve down'):
    model.init(jax.random.PRNGKey(0), image, seg)


def test_bad_configs_are_clear_errors():
  with pytest.raises(ValueError, match='Unknown model_type'):
    models.make_model('unet', TINY_HPUNET)
  image, seg = _inputs(16)
  with pytest.raises(ValueError, match='needs at least 6 U-Net levels'):
    models.make_model('hpunet', dict(TINY_HPUNET, latent_dims=(1,) * 5))
  with pytest.raises(ValueError, match='at least one level > 0'):
    models.make_model('hpunet', dict(TINY_HPUNET, latent_dims=(0, 0)))
  wrong_channels = models.make_model('hpunet', dict(TINY_HPUNET,
                                                    num_input_channels=3))
  with pytest.raises(ValueError, match='expects 3 image channels'):
    wrong_channels.init(jax.random.PRNGKey(0), image, seg)


def test_initialisers():
  model = models.make_model('hpunet', TINY_HPUNET)
  image, seg = _inputs(16)
  params = model.init(jax.random.PRNGKey(0), image, seg)
  w = params['hpunet/~/prior/~encode/encoder_level3_block0/conv3x3_0']['w']
  flat = np.asarray(w).reshape(-1, w.shape[-1])  # [9 * C_in, C_out]
  np.testing.assert_allclose(flat.T @ flat, np.eye(w.shape[-1]), atol=1e-5)
  biases = np.concatenate([np.ravel(p['b']) for p in params.values()])
  assert np.abs(biases).max() <= 0.002 + 1e-9  # truncated at 2 stddev.
  assert 1e-4 < biases.std() < 2e-3


@pytest.mark.parametrize('model_type,kwargs', [('hpunet', TINY_HPUNET),
                                               ('spunet', TINY_SPUNET)])
def test_encoder_once_sampling(model_type, kwargs):
  model = models.make_model(model_type, kwargs)
  image, seg = _inputs(16)
  params = model.init(jax.random.PRNGKey(0), image, seg)
  sample = jax.jit(model.sample, static_argnums=3)
  key = jax.random.PRNGKey(3)
  once = sample(params, key, image, 4)
  rerun = model.sample_full_rerun(params, key, image, 4)
  np.testing.assert_allclose(once, rerun, atol=1e-5)
  # More samples than a chunk, not a multiple of it: the remainder too.
  many = models.SAMPLE_CHUNK + 3
  np.testing.assert_allclose(
      sample(params, key, image, many),
      model.sample_full_rerun(params, key, image, many), atol=1e-5)
  # Same key, same samples; different keys, different samples.
  np.testing.assert_array_equal(once, sample(params, key, image, 4))
  assert np.abs(once[0] - once[1]).max() > 1e-4
  other = sample(params, jax.random.PRNGKey(4), image, 4)
  assert np.abs(other - once).max() > 1e-4
  # Mean at every level: all samples identical, for any key.
  means = [True] * model.num_latent_levels
  mean_samples = sample(params, key, image, 3, means)
  np.testing.assert_allclose(mean_samples[0], mean_samples[2], atol=1e-6)
  np.testing.assert_allclose(
      mean_samples[0], model.decode(params, None, model.encode(params, image),
                                    True), atol=1e-5)


def test_per_level_mean_control():
  model = models.make_model('hpunet', TINY_HPUNET)
  image, seg = _inputs(16)
  params = model.init(jax.random.PRNGKey(0), image, seg)
  encoding = model.encode(params, image)
  key = jax.random.PRNGKey(5)
  only_fine = model.decode(params, key, encoding, (True, False))
  only_coarse = model.decode(params, key, encoding, (False, True))
  full = model.decode(params, key, encoding, None)
  mean = model.decode(params, key, encoding, True)
  for a, b in [(only_fine, mean), (only_coarse, mean), (only_fine, full),
               (only_coarse, only_fine)]:
    assert np.abs(a - b).max() > 1e-5
  # A traced flag array gives the same as the Python flags.
  traced = jax.jit(model.decode)(params, key, encoding,
                                 jnp.array([True, False]))
  np.testing.assert_allclose(traced, only_fine, atol=1e-5)


def test_reconstruct_is_deterministic_and_uses_the_segmentation():
  model = models.make_model('hpunet', TINY_HPUNET)
  image, seg = _inputs(16)
  params = model.init(jax.random.PRNGKey(0), image, seg)
  a = model.reconstruct(params, image, seg)
  np.testing.assert_array_equal(a, model.reconstruct(params, image, seg))
  assert np.abs(a - model.reconstruct(params, image, (seg + 1) % 3)).max() > 0
