"""The Hierarchical Probabilistic U-Net (paper Sec. 2, Fig. 1, Appx. D).

The prior *is* the U-Net: a hierarchical core on the image whose truncated
decoder predicts a Gaussian grid per latent level, followed by a stitching
decoder to logits. A second hierarchical core, the posterior, sees
`concat(one_hot(seg), image)`; during training its latents are fed into the
prior's decoder (teacher forcing) to reconstruct `seg`.

With `num_prior_only_channels > 0` the last that-many input channels go to the
prior only (the extrapolation task of Sec. 3.3 feeds the ground truth of the
unmasked region there; `datasets.masking`); the posterior keeps
`concat(one_hot(seg), image without them)`.

Shape glossary: `B` batch, `H, W` image size, `C_in` image channels, `K`
classes, `L` latent levels.
"""
from typing import NamedTuple, Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp

from hpunet_jax import blocks
from hpunet_jax import hierarchical_core
from hpunet_jax import losses


class TrainOutputs(NamedTuple):
  """Training forward pass.

  Attributes:
    logits: `[B, H, W, K]`, reconstruction from a posterior sample.
    kl_per_level: `[L]`, KL(q || p) per latent level, summed over positions
      and latent dims, averaged over the batch (Eq. 12).
    posterior: tuple of `DiagonalGaussian`, one per level.
    prior: tuple of `DiagonalGaussian` (teacher-forced), one per level.
  """
  logits: jax.Array
  kl_per_level: jax.Array
  posterior: tuple
  prior: tuple


class Encoding(NamedTuple):
  """What sampling reuses: the prior encoder's features, finest first."""
  features: tuple


class HierarchicalProbUNet(hk.Module):
  """HPU-Net. The defaults of the configs are the paper's LIDC model:
  `channels_per_level=(24, 48, 96, 192, 192, 192, 192, 192)`,
  `latent_dims=(1, 1, 1, 1)`, 3 blocks per level, 3 convs per block.

  Ablations are options: `latent_dims=(85,)` is the global-latents-only model
  (one 85-dim latent in the 1x1 bottom); `latent_dims=(0, 0, 0, 1)` keeps the
  topology but only the most local (8x8 at 128x128) latent grid.

  `num_input_channels` counts every input channel, including the last
  `num_prior_only_channels`, which the prior sees and the posterior does not.
  """

  def __init__(self, channels_per_level: Sequence[int],
               latent_dims: Sequence[int], num_classes: int,
               blocks_per_level: int, convs_per_block: int,
               num_input_channels: Optional[int] = None,
               num_prior_only_channels: int = 0,
               name: Optional[str] = 'hpunet'):
    super().__init__(name=name)
    if num_prior_only_channels < 0:
      raise ValueError('num_prior_only_channels must be >= 0, got '
                       f'{num_prior_only_channels}.')
    if num_prior_only_channels and (
        num_input_channels is None
        or num_input_channels <= num_prior_only_channels):
      raise ValueError(
          f'num_prior_only_channels={num_prior_only_channels} needs '
          'num_input_channels to count all input channels (image channels + '
          f'prior-only channels), got num_input_channels={num_input_channels}.')
    self.channels_per_level = tuple(channels_per_level)
    self.num_classes = num_classes
    self.num_input_channels = num_input_channels
    self.num_prior_only_channels = num_prior_only_channels
    core_kwargs = dict(channels_per_level=channels_per_level,
                       latent_dims=latent_dims,
                       blocks_per_level=blocks_per_level,
                       convs_per_block=convs_per_block)
    self.prior = hierarchical_core.HierarchicalCore(**core_kwargs,
                                                    name='prior')
    self.posterior = hierarchical_core.HierarchicalCore(**core_kwargs,
                                                        name='posterior')
    self.stitching_decoder = hierarchical_core.StitchingDecoder(
        channels_per_level, start_level=len(latent_dims) + 1,
        blocks_per_level=blocks_per_level, convs_per_block=convs_per_block,
        num_classes=num_classes, name='stitching_decoder')

  @property
  def num_latent_levels(self) -> int:
    return len(self.prior.latent_levels)

  def _check(self, image: jax.Array) -> None:
    if image.ndim != 4:
      raise ValueError(f'image must be [B, H, W, C], got shape {image.shape}.')
    if (self.num_input_channels is not None
        and image.shape[-1] != self.num_input_channels):
      raise ValueError(f'The model expects {self.num_input_channels} image '
                       f'channels, got shape {image.shape}.')
    blocks.check_halves_down(image.shape, len(self.channels_per_level))

  def _posterior_input(self, image, segmentation):
    """`concat(one_hot(seg), image)`: `[B, H, W, K + C_in - P]`, without the
    `P = num_prior_only_channels` last channels of `image`."""
    if self.num_prior_only_channels:
      image = image[..., :-self.num_prior_only_channels]
    one_hot = jax.nn.one_hot(segmentation, self.num_classes, dtype=image.dtype)
    return jnp.concatenate([one_hot, image], axis=-1)

  def encode(self, image: jax.Array) -> Encoding:
    """Runs the prior encoder once; `[B, H, W, C_in]` -> `Encoding`."""
    self._check(image)
    return Encoding(self.prior.encode(image))

  def decode(self, encoding: Encoding,
             mean_levels: hierarchical_core.MeanLevels = None) -> jax.Array:
    """One prior sample through the decoder path: logits `[B, H, W, K]`.

    Uses the decoder's sampling form (`for_sampling`: the skip features'
    share of each level's first convolution is computed once per image
    under `vmap`, the up-sampled features are convolved at the low
    resolution; benchmarks/README.md).
    """
    out = self.prior.decode(encoding.features, mean_levels=mean_levels,
                            for_sampling=True)
    return self.stitching_decoder(encoding.features, out.decoder_features,
                                  for_sampling=True)

  def _teacher_forced(self, image, segmentation, posterior_mean: bool):
    features = self.prior.encode(image)
    posterior_features = self.posterior.encode(
        self._posterior_input(image, segmentation))
    q = self.posterior.decode(posterior_features,
                              mean_levels=True if posterior_mean else None,
                              stop_after_last_latent=True)
    p = self.prior.decode(features, latents=q.latents)
    logits = self.stitching_decoder(features, p.decoder_features)
    return logits, q, p

  def train_forward(self, image: jax.Array,
                    segmentation: jax.Array) -> TrainOutputs:
    """Posterior sample -> prior decoder -> logits, and the KL per level.

    Args:
      image: `[B, H, W, C_in]`.
      segmentation: `[B, H, W]` int class ids.
    """
    self._check(image)
    logits, q, p = self._teacher_forced(image, segmentation,
                                        posterior_mean=False)
    kl = jnp.stack([losses.kl_per_level(qd, pd)
                    for qd, pd in zip(q.distributions, p.distributions)])
    return TrainOutputs(logits, kl, q.distributions, p.distributions)

  def reconstruct(self, image: jax.Array,
                  segmentation: jax.Array) -> jax.Array:
    """Logits `[B, H, W, K]` from the posterior *means* (for IoU_rec)."""
    self._check(image)
    logits, _, _ = self._teacher_forced(image, segmentation,
                                        posterior_mean=True)
    return logits
