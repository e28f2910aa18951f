"""Building blocks shared by the HPU-Net and the sPU-Net.

Shape glossary: `B` batch, `H, W` height and width, `C` channels.

As in the authors' code (REFERENCE.md section 1): pre-activated res-blocks
without any normalisation, 2x2 average pooling down, nearest-neighbour
up-sampling, orthogonal weights (gain 1) and truncated-normal biases
(stddev 0.001).
"""
from typing import Optional

import haiku as hk
import jax
import jax.numpy as jnp


def weight_init() -> hk.initializers.Initializer:
  """Orthogonal initialisation with gain 1 (paper Appx. D)."""
  return hk.initializers.Orthogonal(scale=1.0)


def bias_init() -> hk.initializers.Initializer:
  """Truncated normal with stddev 0.001 (paper Appx. D)."""
  return hk.initializers.TruncatedNormal(stddev=0.001)


def conv(channels: int, kernel: int, name: Optional[str] = None) -> hk.Conv2D:
  """A SAME-padded convolution with the paper's initialisers."""
  return hk.Conv2D(channels, kernel, padding='SAME', w_init=weight_init(),
                   b_init=bias_init(), name=name)


def resize_down(x: jax.Array) -> jax.Array:
  """2x2 average pooling, stride 2: `[B, H, W, C] -> [B, H/2, W/2, C]`."""
  return hk.avg_pool(x, window_shape=(1, 2, 2, 1), strides=(1, 2, 2, 1),
                     padding='VALID')


def resize_up(x: jax.Array) -> jax.Array:
  """Nearest-neighbour x2: `[B, H, W, C] -> [B, 2H, 2W, C]`."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ResBlock(hk.Module):
  """Pre-activated residual block (He et al. 2016) as in the HPU-Net code.

  `relu(x)` goes through `convs_per_block` 3x3 convs with `channels // 2`
  outputs (ReLU between them, not after the last) and a 1x1 conv back to
  `channels`. The skip is `x` itself, projected by a 1x1 conv only when the
  channel count changes. No normalisation anywhere.
  """

  def __init__(self, channels: int, convs_per_block: int,
               name: Optional[str] = None):
    super().__init__(name=name)
    self.channels = channels
    self.convs_per_block = convs_per_block

  def __call__(self, x: jax.Array) -> jax.Array:
    """`[B, H, W, C_in] -> [B, H, W, channels]`."""
    residual = jax.nn.relu(x)
    for i in range(self.convs_per_block):
      residual = conv(self.channels // 2, 3, name=f'conv3x3_{i}')(residual)
      if i < self.convs_per_block - 1:
        residual = jax.nn.relu(residual)
    residual = conv(self.channels, 1, name='conv1x1_out')(residual)
    skip = x
    if x.shape[-1] != self.channels:
      skip = conv(self.channels, 1, name='skip_projection')(x)
    return skip + residual


def res_stack(x: jax.Array, channels: int, num_blocks: int,
              convs_per_block: int, name: str) -> jax.Array:
  """`num_blocks` res-blocks in a row, named `<name>_block<i>`."""
  for i in range(num_blocks):
    x = ResBlock(channels, convs_per_block, name=f'{name}_block{i}')(x)
  return x


def check_halves_down(image_shape, num_levels: int) -> None:
  """Raises a clear ValueError unless H and W halve `num_levels - 1` times.

  Args:
    image_shape: `(B, H, W, C)` (or anything whose [1:3] are H, W).
    num_levels: number of resolution levels of the U-Net.
  """
  height, width = image_shape[1], image_shape[2]
  factor = 2 ** (num_levels - 1)
  if height % factor or width % factor:
    raise ValueError(
        f'Image size {height}x{width} does not halve down to the bottleneck: '
        f'a U-Net with {num_levels} levels down-samples {num_levels - 1} '
        f'times, so height and width must be multiples of {factor}. Change '
        f'image_size or the number of levels (channels_per_level).')
