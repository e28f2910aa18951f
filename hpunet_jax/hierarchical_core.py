"""The hierarchical core: a res-U-Net encoder and a truncated decoder whose
levels carry grids of latent Gaussians (paper Sec. 2, Fig. 1; Eq. 1-4).

The same module serves as the prior (input: the image) and as the posterior
(input: `concat(one_hot(seg), image)`). Its decoder stops after the last
latent level; the `StitchingDecoder` continues the prior's decoder to full
resolution.

Shape glossary: `B` batch, `H, W` input size, `C_l` channels of level `l`,
`h_l, w_l` = `H / 2**l, W / 2**l`, `D_l` latent dims of decoder level `l`.
Encoder levels are counted from the finest (0) to the bottleneck
(`num_levels - 1`); decoder levels from the bottleneck up (decoder level `l`
works at encoder level `num_levels - 1 - l`).
"""
from typing import NamedTuple, Optional, Sequence, Union

import haiku as hk
import jax
import jax.numpy as jnp

from hpunet_jax import blocks
from hpunet_jax import convolutions
from hpunet_jax import distributions

# Per latent level: use the mean (True) or sample (False). `True` alone means
# "mean everywhere" and needs no PRNG key.
MeanLevels = Union[None, bool, Sequence[bool], jax.Array]


class CoreOutputs(NamedTuple):
  """What one decoder pass of a hierarchical core produces.

  Attributes:
    decoder_features: `[B, h, w, C]` features after the last decoder level run
      (at the resolution of the level above the last latent level for the
      prior; meaningless for the posterior, which stops early).
    distributions: one `DiagonalGaussian` per latent level, coarsest first,
      leaves `[B, h_l, w_l, D_l]`.
    latents: the `z` used at each latent level, `[B, h_l, w_l, D_l]`.
  """
  decoder_features: jax.Array
  distributions: tuple
  latents: tuple


class HierarchicalCore(hk.Module):
  """Res-U-Net encoder + truncated decoder with latent grids.

  `latent_dims[l]` is the number of latent channels at decoder level `l`
  (coarsest first); a 0 means that decoder level has no latent (used for the
  local-latents-only ablation, e.g. `(0, 0, 0, 1)`). The truncated decoder has
  `len(latent_dims)` levels.
  """

  def __init__(self, channels_per_level: Sequence[int],
               latent_dims: Sequence[int], blocks_per_level: int,
               convs_per_block: int, name: Optional[str] = None):
    super().__init__(name=name)
    if len(latent_dims) >= len(channels_per_level):
      raise ValueError(
          f'latent_dims={tuple(latent_dims)} spans {len(latent_dims)} '
          f'decoder levels, which needs at least {len(latent_dims) + 1} U-Net '
          f'levels; channels_per_level={tuple(channels_per_level)} has '
          f'{len(channels_per_level)}.')
    if not any(latent_dims) or min(latent_dims) < 0:
      raise ValueError(f'latent_dims={tuple(latent_dims)} must be >= 0 with '
                       'at least one level > 0.')
    self.channels_per_level = tuple(channels_per_level)
    self.latent_dims = tuple(latent_dims)
    self.blocks_per_level = blocks_per_level
    self.convs_per_block = convs_per_block

  @property
  def num_levels(self) -> int:
    return len(self.channels_per_level)

  @property
  def latent_levels(self) -> tuple:
    """Indices of the decoder levels that carry latents."""
    return tuple(l for l, d in enumerate(self.latent_dims) if d > 0)

  def encode(self, x: jax.Array) -> tuple:
    """`[B, H, W, C_in]` -> per-level features, finest first, `[B, h_l, w_l, C_l]`."""
    features = []
    for level, channels in enumerate(self.channels_per_level):
      if level > 0:
        x = blocks.resize_down(x)
      x = blocks.res_stack(x, channels, self.blocks_per_level,
                           self.convs_per_block, name=f'encoder_level{level}')
      features.append(x)
    return tuple(features)

  def decode(self, encoder_features: Sequence[jax.Array], *,
             latents: Optional[Sequence[jax.Array]] = None,
             mean_levels: MeanLevels = None,
             stop_after_last_latent: bool = False,
             for_sampling: bool = False) -> CoreOutputs:
    """Runs the truncated decoder, drawing or receiving one latent per level.

    `z` comes, in this order of priority, from `latents` (teacher forcing),
    else the mean where `mean_levels` says so, else a sample (Eq. 1/3).

    Args:
      encoder_features: output of `encode`.
      latents: optional given `z` per latent level, `[B, h_l, w_l, D_l]`.
      mean_levels: None (sample every level), True (means everywhere, no PRNG
        key needed), or one bool per latent level, coarsest first.
      stop_after_last_latent: skip the decoder blocks after the last latent
        (the posterior never uses them).
      for_sampling: the decoder's form for sampling: a level's up-sampled
        and skip features enter its first res-block as channel parts,
        the up-sampled ones convolved at the low resolution
        (`blocks.Conv2D`, `convolutions.Upsampled`). Same result to float32
        rounding; faster forward under `vmap` over samples. Training keeps
        the concatenation: the low-resolution form's gradient measured
        slower (benchmarks/README.md).

    Returns:
      `CoreOutputs`.
    """
    num_latent = len(self.latent_levels)
    if latents is not None and len(latents) != num_latent:
      raise ValueError(f'Expected {num_latent} latents, got {len(latents)}.')
    all_means = mean_levels is True
    if not all_means and mean_levels is not None:
      mean_levels = jnp.asarray(mean_levels, dtype=bool)
      if mean_levels.shape != (num_latent,):
        raise ValueError(f'mean_levels needs {num_latent} flags (one per '
                         f'latent level), got shape {mean_levels.shape}.')
    reversed_features = encoder_features[::-1]
    x = reversed_features[0]
    dists, used = [], []
    for level, latent_dim in enumerate(self.latent_dims):
      if latent_dim > 0:
        i = len(dists)
        params = blocks.conv(2 * latent_dim, 1, name=f'latent_level{level}')(x)
        dist = distributions.gaussian_from_params(params)
        if latents is not None:
          z = latents[i]
        elif all_means:
          z = dist.mean
        else:
          use_mean = False if mean_levels is None else mean_levels[i]
          z = distributions.sample_or_mean(dist, hk.next_rng_key(), use_mean)
        dists.append(dist)
        used.append(z)
        x = jnp.concatenate([z, x], axis=-1)
        if stop_after_last_latent and i == num_latent - 1:
          break
      x = _level_input(x, reversed_features[level + 1], for_sampling)
      x = blocks.res_stack(x, self.channels_per_level[::-1][level + 1],
                           self.blocks_per_level, self.convs_per_block,
                           name=f'decoder_level{level}')
    return CoreOutputs(x, tuple(dists), tuple(used))


class StitchingDecoder(hk.Module):
  """Continues the prior's decoder from its last latent level to full
  resolution and maps the features to class logits (1x1 conv)."""

  def __init__(self, channels_per_level: Sequence[int], start_level: int,
               blocks_per_level: int, convs_per_block: int, num_classes: int,
               name: Optional[str] = None):
    super().__init__(name=name)
    self.channels_per_level = tuple(channels_per_level)
    self.start_level = start_level
    self.blocks_per_level = blocks_per_level
    self.convs_per_block = convs_per_block
    self.num_classes = num_classes

  def __call__(self, encoder_features: Sequence[jax.Array],
               decoder_features: jax.Array,
               for_sampling: bool = False) -> jax.Array:
    """Returns logits `[B, H, W, num_classes]`; `for_sampling` as in
    `HierarchicalCore.decode`."""
    reversed_features = encoder_features[::-1]
    reversed_channels = self.channels_per_level[::-1]
    x = decoder_features
    for level in range(self.start_level, len(self.channels_per_level)):
      x = _level_input(x, reversed_features[level], for_sampling)
      x = blocks.res_stack(x, reversed_channels[level], self.blocks_per_level,
                           self.convs_per_block, name=f'decoder_level{level}')
    return blocks.conv(self.num_classes, 1, name='logits')(x)


def _level_input(x: jax.Array, skip: jax.Array,
                 for_sampling: bool) -> blocks.FeatureParts:
  """A decoder level's input from the features below `[B, h, w, C]` and the
  encoder's skip features `[B, 2h, 2w, C_skip]`: their concatenation after
  up-sampling, or (for sampling) the two as lazy channel parts."""
  if for_sampling:
    return (convolutions.Upsampled(x), skip)
  return jnp.concatenate([blocks.resize_up(x), skip], axis=-1)
