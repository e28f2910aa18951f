"""Building blocks shared by the HPU-Net and the sPU-Net.

Shape glossary: `B` batch, `H, W` height and width, `C` channels.

As in the authors' code (REFERENCE.md section 1): pre-activated res-blocks
without any normalisation, 2x2 average pooling down, nearest-neighbour
up-sampling, orthogonal weights (gain 1) and truncated-normal biases
(stddev 0.001).
"""
import math
from typing import Optional

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from hpunet_jax import partitioning


def weight_init() -> hk.initializers.Initializer:
  """Orthogonal initialisation with gain 1 (paper Appx. D)."""
  return hk.initializers.Orthogonal(scale=1.0)


def bias_init() -> hk.initializers.Initializer:
  """Truncated normal with stddev 0.001 (paper Appx. D)."""
  return hk.initializers.TruncatedNormal(stddev=0.001)


def he_normal_init() -> hk.initializers.Initializer:
  """He-normal kernels as the sPU-Net's original code draws them.

  `utils.training_utils.he_normal` of SimonKohl/probabilistic_unet is TF 1.9's
  `VarianceScaling(scale=2, mode='fan_in', distribution='normal')`: a normal
  with stddev `sqrt(2 / fan_in)` truncated at 2 stddevs *without* rescaling,
  so the kernels' std is about `0.88 * sqrt(2 / fan_in)`. `fan_in` is
  `k * k * C_in` of a `[k, k, C_in, C_out]` kernel.
  """

  def init(shape, dtype):
    fan_in = int(np.prod(shape[:-1]))
    return hk.initializers.TruncatedNormal(stddev=math.sqrt(2.0 / fan_in))(
        shape, dtype)

  return init


def conv(channels: int, kernel: int, name: Optional[str] = None,
         w_init: Optional[hk.initializers.Initializer] = None) -> 'Conv2D':
  """A SAME-padded convolution with the paper's initialisers (or `w_init`'s
  kernels)."""
  return Conv2D(channels, kernel, name=name, w_init=w_init)


class Conv2D(hk.Module):
  """SAME-padded, stride-1 convolution with the paper's initialisers.

  Same parameters as `hk.Conv2D` (`w [k, k, C_in, C_out]`, then
  `b [C_out]`, created in that order with the same initialisers), so
  parameters and checkpoints are interchangeable. A 1x1 kernel runs as
  `pointwise_conv`, whose weight gradient is much faster on XLA:CPU.

  Input and output go through `partitioning.feature_map`, which under
  spatial partitioning keeps a level's height split only while each device
  holds enough rows (XLA's partitioner gets coarser levels wrong).
  """

  def __init__(self, channels: int, kernel: int, name: Optional[str] = None,
               w_init: Optional[hk.initializers.Initializer] = None):
    """`w_init`: the kernels' initialiser; None = orthogonal (`weight_init`).
    Passed explicitly (not by a Haiku creator), so that the host-side init
    (`hpunet_jax.initialisation`) sees the initialiser actually used."""
    super().__init__(name=name)
    self.channels = channels
    self.kernel = kernel
    self.w_init = weight_init() if w_init is None else w_init

  def __call__(self, x: jax.Array) -> jax.Array:
    """`[B, H, W, C_in] -> [B, H, W, channels]`."""
    if x.ndim != 4:
      raise ValueError(f'{self.module_name} expects [B, H, W, C] inputs, '
                       f'got shape {x.shape}.')
    x = partitioning.feature_map(x)
    w = hk.get_parameter(
        'w', (self.kernel, self.kernel, x.shape[-1], self.channels), x.dtype,
        init=self.w_init)
    b = hk.get_parameter('b', (self.channels,), x.dtype, init=bias_init())
    if self.kernel == 1:
      y = pointwise_conv(x, w[0, 0])
    else:
      y = jax.lax.conv_general_dilated(
          x, w, window_strides=(1, 1), padding='SAME',
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return partitioning.feature_map(y + b)


# Pixels per chunk of the 1x1 weight gradient (see `_pointwise_conv_bwd`).
_WEIGHT_GRADIENT_CHUNK = 2048


@jax.custom_vjp
def pointwise_conv(x: jax.Array, w: jax.Array) -> jax.Array:
  """1x1 convolution: `x [..., C_in] @ w [C_in, C_out] -> [..., C_out]`.

  Differentiable in reverse mode only (`jax.grad`, `jax.vjp`), through its
  own weight gradient.
  """
  return jnp.dot(x, w)


def _pointwise_conv_fwd(x, w):
  return pointwise_conv(x, w), (x, w)


def _pointwise_conv_bwd(residuals, grad_y):
  """Sums the weight gradient `x^T grad_y` over chunks of pixels.

  XLA:CPU runs the plain `sum_pixels x^T grad_y` (a tiny output from a long
  contraction) as one poorly parallelised product, and a 1x1 `conv` as a
  convolution over the whole image after transposing both operands; a batch
  of products over chunks of `_WEIGHT_GRADIENT_CHUNK` pixels, then a sum, is
  several times faster (e.g. 5 -> 40 GFLOP/s at 128x128, 12 -> 24 channels).
  """
  x, w = residuals
  grad_x = jnp.dot(grad_y, w.T)
  num_pixels = x.size // x.shape[-1]
  chunk = math.gcd(num_pixels, _WEIGHT_GRADIENT_CHUNK)
  x_chunks = x.reshape(num_pixels // chunk, chunk, x.shape[-1])
  grad_chunks = grad_y.reshape(num_pixels // chunk, chunk, grad_y.shape[-1])
  grad_w = jnp.einsum('pni,pno->pio', x_chunks, grad_chunks).sum(axis=0)
  return grad_x, grad_w


pointwise_conv.defvjp(_pointwise_conv_fwd, _pointwise_conv_bwd)


def resize_down(x: jax.Array) -> jax.Array:
  """2x2 average pooling, stride 2: `[B, H, W, C] -> [B, H/2, W/2, C]`."""
  x = partitioning.pooling_input(x, factor=2)
  return partitioning.feature_map(
      hk.avg_pool(x, window_shape=(1, 2, 2, 1), strides=(1, 2, 2, 1),
                  padding='VALID'))


def resize_up(x: jax.Array) -> jax.Array:
  """Nearest-neighbour x2: `[B, H, W, C] -> [B, 2H, 2W, C]`."""
  return partitioning.feature_map(
      jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


def _align_corners_matrix(size: int) -> np.ndarray:
  """`[2 size, size]` linear interpolation weights, corners aligned."""
  if size == 1:
    return np.ones((2, 1))
  position = np.arange(2 * size) * (size - 1) / (2 * size - 1)
  low = np.minimum(np.floor(position).astype(int), size - 2)
  fraction = position - low
  weights = np.zeros((2 * size, size))
  weights[np.arange(2 * size), low] = 1 - fraction
  weights[np.arange(2 * size), low + 1] += fraction
  return weights


def resize_up_bilinear(x: jax.Array) -> jax.Array:
  """Bilinear x2 with aligned corners: `[B, H, W, C] -> [B, 2H, 2W, C]`.

  As `tf.image.resize_images(..., BILINEAR, align_corners=True)` in the
  sPU-Net's original U-Net: output pixel `o` samples input position
  `o (n - 1) / (2n - 1)`, so the corner pixels are kept.
  """
  rows = jnp.asarray(_align_corners_matrix(x.shape[1]), x.dtype)
  cols = jnp.asarray(_align_corners_matrix(x.shape[2]), x.dtype)
  x = jnp.einsum('ph,bhwc->bpwc', rows, x)
  return jnp.einsum('qw,bpwc->bpqc', cols, x)


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
