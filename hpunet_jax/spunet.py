"""The standard Probabilistic U-Net baseline (sPU-Net, Kohl et al. 2018).

A plain U-Net (VGG-style: `convs_per_level` 3x3 conv + ReLU per scale,
average-pool down, bilinear or nearest-neighbour up), a separate prior net
(image) and
posterior net (`concat(image, one_hot(seg) - 0.5)`), each an encoder like the
U-Net's whose spatial mean gives a diagonal Gaussian over one *global* latent
vector, and `f_comb`: z tiled over space, concatenated to the U-Net's last
features, 1x1 convs to logits
(docs/paper_notes.md#15-spu-net-as-originally-coded).

`weight_init` and `up_sampling` choose between the original code
(SimonKohl/probabilistic_unet: He-normal kernels everywhere, bilinear
up-sampling with aligned corners; the configs' default) and the HPU-Net's
choices (orthogonal kernels, nearest neighbour), with which the ~30-layer
plain ReLU stack starts with a near-vanishing output (docs/paper_mapping.md).

Shape glossary: `B` batch, `H, W` image size, `C` channels, `K` classes, `D`
latent dims.
"""
from typing import NamedTuple, Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp

from hpunet_jax import blocks
from hpunet_jax import choices
from hpunet_jax import distributions
from hpunet_jax import hierarchical_core
from hpunet_jax import hpunet
from hpunet_jax import losses


WEIGHT_INITS = ('he_normal', 'orthogonal')
UP_SAMPLINGS = ('bilinear', 'nearest')


class Encoding(NamedTuple):
  """What sampling reuses: U-Net features `[B, H, W, C_0]` and the prior."""
  unet_features: jax.Array
  prior: distributions.DiagonalGaussian


def conv_stack(x: jax.Array, channels: int, num_convs: int,
               name: str, w_init) -> jax.Array:
  """`num_convs` x (3x3 conv + ReLU); kernels from `w_init` (None =
  orthogonal)."""
  for i in range(num_convs):
    x = jax.nn.relu(blocks.conv(channels, 3, name=f'{name}_conv{i}',
                                w_init=w_init)(x))
  return x


def vgg_encoder(x: jax.Array, channels_per_level: Sequence[int],
                convs_per_level: int, w_init) -> list:
  """Per-level features, finest first: `[B, H / 2**l, W / 2**l, C_l]`."""
  features = []
  for level, channels in enumerate(channels_per_level):
    if level > 0:
      x = blocks.resize_down(x)
    x = conv_stack(x, channels, convs_per_level, name=f'encoder_level{level}',
                   w_init=w_init)
    features.append(x)
  return features


class GlobalLatentNet(hk.Module):
  """Prior or posterior net: encoder -> spatial mean -> 1x1 conv -> Gaussian
  with leaves `[B, 1, 1, D]`."""

  def __init__(self, channels_per_level, convs_per_level, latent_dim,
               w_init, name=None):
    super().__init__(name=name)
    self.w_init = w_init
    self.channels_per_level = tuple(channels_per_level)
    self.convs_per_level = convs_per_level
    self.latent_dim = latent_dim

  def __call__(self, x: jax.Array) -> distributions.DiagonalGaussian:
    features = vgg_encoder(x, self.channels_per_level, self.convs_per_level,
                           self.w_init)
    pooled = jnp.mean(features[-1], axis=(1, 2), keepdims=True)
    params = blocks.conv(2 * self.latent_dim, 1, name='latent',
                         w_init=self.w_init)(pooled)
    return distributions.gaussian_from_params(params)


class ProbUNet(hk.Module):
  """sPU-Net; paper setup on LIDC: 5 scales, 6 latents, 3 convs per scale."""

  def __init__(self, channels_per_level: Sequence[int], convs_per_level: int,
               latent_dim: int, num_classes: int, num_comb_convs: int, *,
               weight_init: str, up_sampling: str,
               num_input_channels: Optional[int] = None,
               name: Optional[str] = 'spunet'):
    """See the module docstring; `weight_init` in `WEIGHT_INITS`,
    `up_sampling` in `UP_SAMPLINGS`."""
    super().__init__(name=name)
    if num_comb_convs < 1:
      raise ValueError(f'num_comb_convs must be >= 1, got {num_comb_convs}.')
    choices.check_choice('weight_init', weight_init, WEIGHT_INITS)
    choices.check_choice('up_sampling', up_sampling, UP_SAMPLINGS)
    self.weight_init = weight_init
    # Kernels of every conv; None = blocks.conv's orthogonal ones.
    self.w_init = (blocks.he_normal_init() if weight_init == 'he_normal'
                   else None)
    self.resize_up = (blocks.resize_up_bilinear if up_sampling == 'bilinear'
                      else blocks.resize_up)
    self.channels_per_level = tuple(channels_per_level)
    self.convs_per_level = convs_per_level
    self.latent_dim = latent_dim
    self.num_classes = num_classes
    self.num_comb_convs = num_comb_convs
    self.num_input_channels = num_input_channels
    net_kwargs = dict(channels_per_level=channels_per_level,
                      convs_per_level=convs_per_level, latent_dim=latent_dim,
                      w_init=self.w_init)
    self.prior_net = GlobalLatentNet(**net_kwargs, name='prior_net')
    self.posterior_net = GlobalLatentNet(**net_kwargs, name='posterior_net')

  num_latent_levels = 1

  _check = hpunet.HierarchicalProbUNet._check  # Same input validation.

  def _unet(self, image: jax.Array) -> jax.Array:
    """U-Net features at full resolution, `[B, H, W, C_0]`."""
    with hk.name_scope('unet'):
      features = vgg_encoder(image, self.channels_per_level,
                             self.convs_per_level, self.w_init)
      x = features[-1]
      for level in range(len(features) - 2, -1, -1):
        x = jnp.concatenate([self.resize_up(x), features[level]], axis=-1)
        x = conv_stack(x, self.channels_per_level[level], self.convs_per_level,
                       name=f'decoder_level{level}', w_init=self.w_init)
    return x

  def _f_comb(self, unet_features: jax.Array, z: jax.Array) -> jax.Array:
    """Tiles z `[B, 1, 1, D]` over space, 1x1 convs to logits `[B,H,W,K]`."""
    with hk.name_scope('f_comb'):
      tiled = jnp.broadcast_to(z, unet_features.shape[:3] + z.shape[-1:])
      x = jnp.concatenate([unet_features, tiled], axis=-1)
      for i in range(self.num_comb_convs - 1):
        x = jax.nn.relu(blocks.conv(unet_features.shape[-1], 1,
                                    name=f'conv1x1_{i}', w_init=self.w_init)(x))
      return blocks.conv(self.num_classes, 1, name='logits',
                         w_init=self.w_init)(x)

  def _posterior(self, image, segmentation):
    one_hot = jax.nn.one_hot(segmentation, self.num_classes, dtype=image.dtype)
    return self.posterior_net(jnp.concatenate([image, one_hot - 0.5], -1))

  def encode(self, image: jax.Array) -> Encoding:
    self._check(image)
    return Encoding(self._unet(image), self.prior_net(image))

  def decode(self, encoding: Encoding,
             mean_levels: hierarchical_core.MeanLevels = None) -> jax.Array:
    """One prior sample (or its mean) through f_comb: `[B, H, W, K]`."""
    if mean_levels is True:
      z = encoding.prior.mean
    else:
      use_mean = False if mean_levels is None else jnp.asarray(mean_levels)[0]
      z = distributions.sample_or_mean(encoding.prior, hk.next_rng_key(),
                                       use_mean)
    return self._f_comb(encoding.unet_features, z)

  def train_forward(self, image: jax.Array,
                    segmentation: jax.Array) -> hpunet.TrainOutputs:
    self._check(image)
    encoding = self.encode(image)
    q = self._posterior(image, segmentation)
    z = distributions.sample_or_mean(q, hk.next_rng_key(), False)
    logits = self._f_comb(encoding.unet_features, z)
    kl = losses.kl_per_level(q, encoding.prior)[None]
    return hpunet.TrainOutputs(logits, kl, (q,), (encoding.prior,))

  def reconstruct(self, image: jax.Array,
                  segmentation: jax.Array) -> jax.Array:
    """Logits from the posterior mean."""
    self._check(image)
    unet_features = self._unet(image)
    q = self._posterior(image, segmentation)
    return self._f_comb(unet_features, q.mean)
