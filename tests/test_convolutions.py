"""The convolution kernels behind `blocks.Conv2D` compute the plain maths.

* `conv3x3_of_upsampled` equals a SAME 3x3 convolution of the up-sampled map
  (values and gradients, odd and 1x1 sizes).
* A `Conv2D` or `ResBlock` of channel parts (one possibly an `Upsampled`)
  has the parameters and results of the same module on their concatenation.
* The HPU-Net's sampling decoder (lazy up-sampling) equals the plain one, at
  a tiny geometry and at the LIDC default's 8 levels (few channels).
"""
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpunet_jax import blocks
from hpunet_jax import convolutions
from hpunet_jax import hpunet
from hpunet_jax import initialisation
from hpunet_jax import models
from tests import test_model


def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape),
                     jnp.float32)


def _plain_conv3x3_of_upsampled(low_res, w):
  return jax.lax.conv_general_dilated(
      convolutions.upsample_nearest(low_res), w, (1, 1), 'SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@pytest.mark.parametrize('shape', [(2, 1, 1, 3, 2), (1, 2, 3, 4, 5),
                                   (2, 5, 4, 3, 7)])
def test_conv3x3_of_upsampled_equals_conv_of_the_upsampled_map(shape):
  batch, height, width, channels, outputs = shape
  low_res = _normal(0, (batch, height, width, channels))
  w = _normal(1, (3, 3, channels, outputs))
  expected = _plain_conv3x3_of_upsampled(low_res, w)
  got = convolutions.conv3x3_of_upsampled(low_res, w)
  assert got.shape == (batch, 2 * height, 2 * width, outputs)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  cotangent = _normal(2, expected.shape)
  grads = [jax.grad(lambda a, w, f=f: jnp.sum(f(a, w) * cotangent),
                    argnums=(0, 1))(low_res, w)
           for f in (convolutions.conv3x3_of_upsampled,
                     _plain_conv3x3_of_upsampled)]
  for got_grad, expected_grad in zip(*grads):
    np.testing.assert_allclose(got_grad, expected_grad, rtol=1e-5, atol=1e-4)


def _parts_and_concatenation(module_fn):
  """The same module applied to (Upsampled(a), e) and to their concat."""
  low_res, skip = _normal(0, (2, 4, 5, 3)), _normal(1, (2, 8, 10, 2))
  on_parts_fn = lambda a, e: module_fn()((convolutions.Upsampled(a), e))
  on_concat_fn = lambda a, e: module_fn()(
      jnp.concatenate([blocks.resize_up(a), e], axis=-1))
  on_parts, on_concat = hk.transform(on_parts_fn), hk.transform(on_concat_fn)
  # Drawn on the host (as `model.init` does): no QR compiled per kernel.
  params = initialisation.host_init(on_parts_fn)(
      jax.random.PRNGKey(3), low_res, skip)
  reference_params = initialisation.host_init(on_concat_fn)(
      jax.random.PRNGKey(3), low_res, skip)
  assert jax.tree.structure(params) == jax.tree.structure(reference_params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference_params)):
    np.testing.assert_array_equal(a, b)

  def loss(apply, params, a, e):
    return jnp.sum(jnp.sin(apply(params, None, a, e)))

  results = []
  for transformed in (on_parts, on_concat):
    results.append(jax.jit(lambda p, a, e, f=transformed.apply: (
        f(p, None, a, e), jax.grad(loss, argnums=(1, 2, 3))(f, p, a, e)))(
            params, low_res, skip))
  (out, grads), (expected_out, expected_grads) = results
  np.testing.assert_allclose(out, expected_out, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('kernel', [1, 3])
def test_conv2d_of_channel_parts_equals_conv2d_of_concatenation(kernel):
  _parts_and_concatenation(lambda: blocks.conv(4, kernel, name='c'))


@pytest.mark.parametrize('channels', [6, 5])  # projected skip; identity skip
def test_res_block_of_channel_parts_equals_res_block_of_concatenation(
    channels):
  _parts_and_concatenation(lambda: blocks.ResBlock(channels, 2, name='r'))


def test_conv2d_rejects_a_part_that_is_not_a_feature_map():
  apply = hk.transform(lambda x, y: blocks.conv(4, 3, name='c')((x, y))).init
  with pytest.raises(ValueError, match=r'\[B, H, W, C\]'):
    apply(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 2)), jnp.zeros((4, 4)))


def _prior_decoder(kwargs, lazily):
  def decode(image):
    net = hpunet.HierarchicalProbUNet(**kwargs)
    features = net.encode(image).features
    out = net.prior.decode(features, mean_levels=True, for_sampling=lazily)
    return net.stitching_decoder(features, out.decoder_features,
                                 for_sampling=lazily)
  return hk.transform(decode)


# The LIDC default's geometry (8 levels, 128x128, 4 latent levels) with 8
# channels a level and one block: the level structure is what is tested.
_LIDC_GEOMETRY = dict(test_model.LIDC_HPUNET, channels_per_level=(8,) * 8,
                      blocks_per_level=1)


@pytest.mark.parametrize('kwargs,size', [(test_model.TINY_HPUNET, 16),
                                         (_LIDC_GEOMETRY, 128)])
def test_lazy_upsampling_decoder_equals_the_plain_decoder(kwargs, size):
  """`model.decode` (sampling, lazy) = the training path's decoder."""
  image, segmentation = test_model._inputs(  # pylint: disable=protected-access
      size, batch=1, num_classes=kwargs['num_classes'])
  model = models.make_model('hpunet', kwargs)
  params = model.init(jax.random.PRNGKey(0), image, segmentation)
  plain = jax.jit(_prior_decoder(kwargs, lazily=False).apply)(
      params, None, image)
  lazy = jax.jit(_prior_decoder(kwargs, lazily=True).apply)(
      params, None, image)
  np.testing.assert_allclose(lazy, plain, rtol=1e-4, atol=1e-5)
  assert np.abs(plain).max() > 1e-3  # Not trivially zero.
  if size == 16:  # `model.decode` is the lazy path (one more compile).
    decoded = jax.jit(lambda p, x: model.decode(p, None, model.encode(p, x),
                                                True))(params, image)
    np.testing.assert_allclose(decoded, plain, rtol=1e-4, atol=1e-5)
