"""Convolution kernels behind `blocks.Conv2D`, written for XLA:CPU's speed
without changing the maths (results equal to float32 rounding).

* `pointwise_conv`: a 1x1 convolution as a matrix product with a chunked
  weight gradient.
* `Upsampled` and `conv3x3_of_upsampled`: a 3x3 convolution of a
  nearest-neighbour x2 up-sampled map computed at the low resolution.

Shape glossary: `B` batch, `h, w` low-resolution height and width, `C`
input channels, `O` output channels.
"""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


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


class Upsampled(NamedTuple):
  """Nearest-neighbour x2 up-sampling of `low_res [B, h, w, C]`, not yet
  materialised. `blocks.Conv2D` convolves it at the low resolution
  (`conv3x3_of_upsampled`, `pointwise_conv` then up-sampling); ReLU
  commutes with it. `shape` is the up-sampled `[B, 2h, 2w, C]`."""
  low_res: jax.Array

  @property
  def shape(self) -> tuple:
    batch, height, width, channels = self.low_res.shape
    return (batch, 2 * height, 2 * width, channels)

  @property
  def ndim(self) -> int:
    return self.low_res.ndim

  @property
  def dtype(self):
    return self.low_res.dtype


def upsample_nearest(x: jax.Array) -> jax.Array:
  """Nearest-neighbour x2: `[B, h, w, C] -> [B, 2h, 2w, C]`."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


# In one dimension, the 3 taps of a SAME 3x3 window on the up-sampled map
# fall on 2 low-resolution pixels: output phase 0 (even rows, 2i) reads rows
# i-1, i with taps (k0, k1 + k2); phase 1 (odd rows) reads rows i, i+1 with
# taps (k0 + k1, k2). `[phase, low-res tap, kernel tap]`.
_PHASE_TAPS = np.array([[[1, 0, 0], [0, 1, 1]],
                        [[1, 1, 0], [0, 0, 1]]], np.float32)


def conv3x3_of_upsampled(low_res: jax.Array, w: jax.Array) -> jax.Array:
  """`conv3x3_SAME(upsample_nearest(low_res), w)` at the low resolution.

  Each of the four output phases (row and column parity) is a 2x2
  convolution of `low_res` with summed taps of `w`; the four run as one
  2x2 convolution with `4 O` outputs over the zero-padded input, then
  interleave. 16 C O multiply-adds per low-resolution pixel instead of
  36 C O, and no up-sampled copy of the input.

  Args:
    low_res: `[B, h, w, C]`.
    w: `[3, 3, C, O]` kernel for the up-sampled map.

  Returns:
    `[B, 2h, 2w, O]`.
  """
  taps = jnp.asarray(_PHASE_TAPS, w.dtype)
  channels, outputs = w.shape[2], w.shape[3]
  # [2 (row tap), 2 (column tap), C, 2 (row phase), 2 (column phase), O]
  phase_kernels = jnp.einsum('prk,qsl,klio->rsipqo', taps, taps, w)
  y = jax.lax.conv_general_dilated(
      low_res, phase_kernels.reshape(2, 2, channels, 4 * outputs),
      window_strides=(1, 1), padding=((1, 1), (1, 1)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))  # [B, h+1, w+1, 4 O]
  batch, height, width = low_res.shape[:3]
  y = y.reshape(batch, height + 1, width + 1, 2, 2, outputs)
  # Output pixel (2i + p, 2j + q) is phase (p, q) at window (i + p, j + q).
  rows = [jnp.stack([y[:, p:p + height, q:q + width, p, q] for q in (0, 1)],
                    axis=3) for p in (0, 1)]  # each [B, h, w, 2, O]
  return jnp.stack(rows, axis=2).reshape(batch, 2 * height, 2 * width,
                                         outputs)
