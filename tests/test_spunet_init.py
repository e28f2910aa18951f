"""The sPU-Net as originally coded: He-normal kernels, bilinear up-sampling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpunet_jax import blocks
from hpunet_jax import models

# A 5-scale, 3-convs-per-scale sPU-Net (the paper's LIDC depth) at 16x16.
DEEP_SPUNET = dict(channels_per_level=(16, 32, 32, 32, 32), convs_per_level=3,
                   latent_dim=6, num_classes=2, num_comb_convs=4)


def _init(weight_init, up_sampling='bilinear', seed=0, model_kwargs=None):
  model = models.make_model('spunet', dict(
      model_kwargs or DEEP_SPUNET, weight_init=weight_init,
      up_sampling=up_sampling))
  rng = np.random.default_rng(seed)
  image = jnp.asarray(rng.uniform(size=(4, 16, 16, 1)), jnp.float32)
  seg = jnp.asarray(rng.integers(0, 2, (4, 16, 16)), jnp.int32)
  params = model.init(jax.random.PRNGKey(seed), image, seg)
  return model, params, image, seg


@pytest.fixture(scope='module')
def deep_nets():
  return {w: _init(w) for w in ('he_normal', 'orthogonal')}


def test_he_normal_kernels_have_he_std_and_biases_are_unchanged(deep_nets):
  _, params, _, _ = deep_nets['he_normal']
  for module, leaves in params.items():
    w = np.asarray(leaves['w'])
    he_std = np.sqrt(2.0 / np.prod(w.shape[:-1]))
    if w.size >= 500:  # Enough draws for a tight band.
      # TF 1.9's truncation at 2 stddevs without rescaling: 0.88 x He.
      assert 0.80 * he_std < w.std() < 0.96 * he_std, module
    assert np.abs(np.asarray(leaves['b'])).max() < 0.01, module


def test_he_normal_output_std_at_init_is_far_from_vanishing(deep_nets):
  """Review of issue 11: with orthogonal kernels (gain 1) the ~30-layer ReLU
  stack starts with a near-zero output; He-normal keeps the activations'
  scale, as the original code did."""
  stds = {}
  for weight_init, (model, params, image, seg) in deep_nets.items():
    logits = model.reconstruct(params, image, seg)
    stds[weight_init] = float(jnp.std(logits[..., 1] - logits[..., 0]))
  # Measured (seeds 0, 1): He-normal 0.015, 0.14; orthogonal 0.0015, 0.003.
  # The He-normal output stays within a band around the input's scale
  # (uniform [0, 1] pixels, std 0.29); the orthogonal one nearly vanishes.
  assert 0.005 < stds['he_normal'] < 3.0
  assert stds['he_normal'] > 4 * stds['orthogonal']


def test_bilinear_up_sampling_aligns_corners():
  x = jnp.asarray([[1.0, 4.0]]).reshape(1, 1, 2, 1)
  x = jnp.broadcast_to(x, (1, 2, 2, 1))
  up = blocks.resize_up_bilinear(x)[0, 0, :, 0]
  # Output positions 0, 1/3, 2/3, 1 of the input [1, 4].
  np.testing.assert_allclose(up, [1.0, 2.0, 3.0, 4.0], rtol=1e-6)
  one = blocks.resize_up_bilinear(jnp.full((1, 1, 1, 3), 2.0))
  np.testing.assert_allclose(one, np.full((1, 2, 2, 3), 2.0))
  ramp = jnp.arange(4.0).reshape(1, 4, 1, 1) * jnp.ones((1, 4, 4, 1))
  out = blocks.resize_up_bilinear(ramp)[0, :, 0, 0]
  np.testing.assert_allclose(out, np.arange(8) * 3 / 7, rtol=1e-6)


def test_up_sampling_option_changes_the_decoder_only():
  tiny = dict(DEEP_SPUNET, channels_per_level=(8, 8), convs_per_level=1)
  bilinear, params, image, seg = _init('he_normal', 'bilinear',
                                       model_kwargs=tiny)
  nearest, _, _, _ = _init('he_normal', 'nearest', model_kwargs=tiny)
  assert not np.allclose(bilinear.reconstruct(params, image, seg),
                         nearest.reconstruct(params, image, seg))


def test_bad_options_raise():
  tiny = dict(DEEP_SPUNET, channels_per_level=(8, 8), convs_per_level=1)
  with pytest.raises(ValueError, match='weight_init'):
    _init('glorot', model_kwargs=tiny)
  with pytest.raises(ValueError, match='up_sampling'):
    _init('he_normal', 'cubic', model_kwargs=tiny)
