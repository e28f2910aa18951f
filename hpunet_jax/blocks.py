"""Building blocks shared by the HPU-Net and the sPU-Net.

Shape glossary: `B` batch, `H, W` height and width, `C` channels.

As in the authors' code (docs/paper_notes.md#2-res-block, #3-resampling,
#7-initialisation): pre-activated res-blocks without any normalisation, 2x2
average pooling down, nearest-neighbour up-sampling, orthogonal weights
(gain 1) and truncated-normal biases (stddev 0.001).
"""
import math
from typing import Optional, Sequence, Union

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from hpunet_jax import convolutions
from hpunet_jax import partitioning

# One feature map `[B, H, W, C]`, or channel parts of one standing for their
# concatenation on the last axis (see `Conv2D.__call__`); a part may be a
# not yet up-sampled `convolutions.Upsampled`.
Feature = Union[jax.Array, convolutions.Upsampled]
FeatureParts = Union[Feature, Sequence[Feature]]


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
  `convolutions.pointwise_conv`, whose weight gradient is much faster on
  XLA:CPU.

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

  def __call__(self, x: FeatureParts) -> jax.Array:
    """`[B, H, W, C_in] -> [B, H, W, channels]`.

    `x` may be a tuple of channel parts `[B, H, W, C_i]` standing for their
    concatenation (`sum C_i = C_in`): each part is convolved with its slice
    of the one kernel and the results summed. Same parameters and result
    (to float32 rounding) as concatenating first, without the copy; and a
    part that does not depend on the sampled latents (the encoder's skip
    features) is convolved once per image when `vmap` maps the decoder
    over samples, not once per sample.
    """
    parts = _as_parts(x)
    for part in parts:
      if part.ndim != 4:
        raise ValueError(f'{self.module_name} expects [B, H, W, C] inputs, '
                         f'got shape {part.shape}.')
    in_channels = sum(part.shape[-1] for part in parts)
    w = hk.get_parameter(
        'w', (self.kernel, self.kernel, in_channels, self.channels),
        parts[0].dtype, init=self.w_init)
    b = hk.get_parameter('b', (self.channels,), parts[0].dtype,
                         init=bias_init())
    y, start = None, 0
    for part in parts:
      y_part = self._convolve(part, w[:, :, start:start + part.shape[-1]])
      start += part.shape[-1]
      y = y_part if y is None else y + y_part
    return partitioning.feature_map(y + b)

  def _convolve(self, part: Feature, w: jax.Array) -> jax.Array:
    """One part `[B, H, W, C_i]` with its kernel slice `[k, k, C_i, O]`."""
    if isinstance(part, convolutions.Upsampled):
      low_res = partitioning.feature_map(part.low_res)
      if self.kernel == 3:
        return convolutions.conv3x3_of_upsampled(low_res, w)
      if self.kernel == 1:
        return resize_up(convolutions.pointwise_conv(low_res, w[0, 0]))
      part = resize_up(low_res)
    part = partitioning.feature_map(part)
    if self.kernel == 1:
      return convolutions.pointwise_conv(part, w[0, 0])
    return jax.lax.conv_general_dilated(
        part, w, window_strides=(1, 1), padding='SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _as_parts(x: FeatureParts) -> tuple:
  return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def materialise(x: Feature) -> jax.Array:
  """The `[B, H, W, C]` array of a feature (up-samples an `Upsampled`)."""
  if isinstance(x, convolutions.Upsampled):
    return resize_up(x.low_res)
  return x


def relu(x: Feature) -> Feature:
  """ReLU; keeps an `Upsampled` lazy (ReLU commutes with up-sampling)."""
  if isinstance(x, convolutions.Upsampled):
    return convolutions.Upsampled(jax.nn.relu(x.low_res))
  return jax.nn.relu(x)


def resize_down(x: jax.Array) -> jax.Array:
  """2x2 average pooling, stride 2: `[B, H, W, C] -> [B, H/2, W/2, C]`."""
  x = partitioning.pooling_input(x, factor=2)
  return partitioning.feature_map(
      hk.avg_pool(x, window_shape=(1, 2, 2, 1), strides=(1, 2, 2, 1),
                  padding='VALID'))


def resize_up(x: jax.Array) -> jax.Array:
  """Nearest-neighbour x2: `[B, H, W, C] -> [B, 2H, 2W, C]`."""
  return partitioning.feature_map(convolutions.upsample_nearest(x))


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

  def __call__(self, x: FeatureParts) -> jax.Array:
    """`[B, H, W, C_in] -> [B, H, W, channels]`; `x` may be channel parts
    (see `Conv2D.__call__`), e.g. the up-sampled decoder features and the
    encoder's skip features of a decoder level."""
    parts = _as_parts(x)
    residual = tuple(relu(part) for part in parts)
    for i in range(self.convs_per_block):
      residual = conv(self.channels // 2, 3, name=f'conv3x3_{i}')(residual)
      if i < self.convs_per_block - 1:
        residual = jax.nn.relu(residual)
    residual = conv(self.channels, 1, name='conv1x1_out')(residual)
    if sum(part.shape[-1] for part in parts) != self.channels:
      skip = conv(self.channels, 1, name='skip_projection')(parts)
    else:
      skip = jnp.concatenate([materialise(part) for part in parts], axis=-1)
    return skip + residual


def res_stack(x: FeatureParts, channels: int, num_blocks: int,
              convs_per_block: int, name: str) -> jax.Array:
  """`num_blocks` res-blocks in a row, named `<name>_block<i>`; `x` may be
  channel parts (`Conv2D.__call__`)."""
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
