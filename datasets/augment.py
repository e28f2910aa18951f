"""On-device data augmentation: pure, jit-able JAX functions.

`augment_batch` draws, per example, one geometric warp (random crop position,
rotation, scale, shear, mirroring and an elastic deformation) and applies it
to the image and every label map together: bilinear for `image`, nearest for
everything else. Output pixels whose source lies outside the input get 0 in
`mask` (and 0 in the image and labels); pixels already masked (ignore labels)
stay masked. An optional colour jitter follows. With every strength zero or
off and no crop the batch comes back unchanged, bit for bit.

The warp maps output pixel `p` (row, column) to the source position
`c_src + A (p - c_out) + d(p)`: `c_out` is the output centre, `c_src` the
centre of the crop window in the input (a random integer offset), `A =
R(rotation) Shear(shear) / scale Flip`, and `d` the elastic displacement field
(Gaussian-smoothed white noise, scaled to RMS `elastic_alpha` pixels per
axis).
"""
from collections.abc import Mapping, Sequence
import math

import jax
import jax.numpy as jnp
import numpy as np

# ITU-R BT.601 luma weights, for the saturation jitter of RGB images.
_LUMA = (0.299, 0.587, 0.114)


def _pair(size) -> tuple[int, int]:
  if isinstance(size, int):
    return (size, size)
  size = tuple(int(s) for s in size)
  if len(size) != 2 or min(size) < 1:
    raise ValueError(f'crop_size must be an int or (height, width), got {size}')
  return size


def _jitter_strengths(colour_jitter) -> tuple[float, float, float]:
  if isinstance(colour_jitter, (int, float)):
    strengths = (float(colour_jitter),) * 3
  else:
    strengths = tuple(float(s) for s in colour_jitter)
  if len(strengths) != 3 or min(strengths) < 0:
    raise ValueError('colour_jitter must be a strength >= 0 or (brightness, '
                     f'contrast, saturation), got {colour_jitter}')
  return strengths


def gaussian_kernel(sigma: float) -> np.ndarray:
  """Normalised 1-D Gaussian, radius `ceil(3 sigma)`, float32 `[2r + 1]`."""
  radius = max(1, math.ceil(3 * sigma))
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  kernel = np.exp(-0.5 * (x / sigma)**2)
  return (kernel / kernel.sum()).astype(np.float32)


def elastic_displacement(rng: jax.Array, shape: tuple[int, int], sigma: float,
                         alpha: float) -> jax.Array:
  """Smooth random displacement field float32 `[2, H, W]`.

  White noise on a grid padded by the kernel radius, smoothed by a separable
  Gaussian (`sigma` pixels, 'valid' so the borders are as smooth as the
  centre) and scaled so each component has RMS `alpha` pixels.
  """
  kernel = gaussian_kernel(sigma)
  radius = (len(kernel) - 1) // 2
  height, width = shape
  noise = jax.random.normal(rng, (2, height + 2 * radius, width + 2 * radius))
  smooth = lambda field: jax.scipy.signal.convolve(
      jax.scipy.signal.convolve(field, kernel[:, None], mode='valid'),
      kernel[None, :], mode='valid')
  # Smoothed unit white noise has standard deviation sum(kernel**2).
  return jax.vmap(smooth)(noise) * (alpha / float(np.sum(kernel**2)))


def _source_coordinates(rng, in_shape, out_shape, *, rotation_degrees,
                        scale_range, shear, elastic_sigma, elastic_alpha, flip,
                        flip_vertical):
  """Source (row, column) float32 `[2, h, w]` for each output pixel."""
  keys = jax.random.split(rng, 8)
  (in_h, in_w), (out_h, out_w) = in_shape, out_shape
  # Integer crop offset, uniform over the positions that fit (or, for a crop
  # larger than the input, over the paddings that keep the input inside).
  top = jax.random.randint(keys[0], (), min(0, in_h - out_h),
                           max(0, in_h - out_h) + 1)
  left = jax.random.randint(keys[1], (), min(0, in_w - out_w),
                            max(0, in_w - out_w) + 1)
  centre_src = jnp.stack([top + (out_h - 1) / 2, left + (out_w - 1) / 2])
  matrix = jnp.eye(2)
  if rotation_degrees:
    angle = jnp.deg2rad(jax.random.uniform(
        keys[2], (), minval=-rotation_degrees, maxval=rotation_degrees))
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    matrix = jnp.array([[cos, -sin], [sin, cos]])
  if shear:
    angle = jnp.deg2rad(jax.random.uniform(keys[3], (), minval=-shear,
                                           maxval=shear))
    matrix = matrix @ jnp.array([[1.0, 0.0], [jnp.tan(angle), 1.0]])
  low, high = scale_range
  if (low, high) != (1, 1):
    # Log-uniform zoom; content appears `scale` times larger.
    scale = jnp.exp(jax.random.uniform(keys[4], (), minval=math.log(low),
                                       maxval=math.log(high)))
    matrix = matrix / scale
  signs = []
  for do_flip, key in ((flip_vertical, keys[5]), (flip, keys[6])):
    signs.append(jnp.where(jax.random.bernoulli(key), -1.0, 1.0)
                 if do_flip else 1.0)
  matrix = matrix * jnp.stack(signs)[None, :]
  rows, cols = jnp.meshgrid(jnp.arange(out_h, dtype=jnp.float32) -
                            (out_h - 1) / 2,
                            jnp.arange(out_w, dtype=jnp.float32) -
                            (out_w - 1) / 2, indexing='ij')
  coords = jnp.einsum('ij,jhw->ihw', matrix, jnp.stack([rows, cols]))
  coords = coords + centre_src[:, None, None]
  if elastic_alpha:
    coords = coords + elastic_displacement(keys[7], out_shape, elastic_sigma,
                                           elastic_alpha)
  return coords


def _warp(array: jax.Array, coords: jax.Array, order: int) -> jax.Array:
  """Samples `[H, W, ...]` at `coords` `[2, h, w]` -> `[h, w, ...]`.

  Points outside the input read 0.
  """
  flat = array.reshape(array.shape[:2] + (-1,))
  sample = lambda channel: jax.scipy.ndimage.map_coordinates(
      channel, [coords[0], coords[1]], order=order, mode='constant', cval=0)
  warped = jax.vmap(sample, in_axes=-1, out_axes=-1)(flat)
  return warped.reshape(coords.shape[1:] + array.shape[2:])


def _colour_jitter(rng, image, valid, strengths):
  """Random brightness shift, contrast and saturation scaling; clips to [0, 1].

  The contrast pivots on the mean over `valid` (`[H, W]` bool) pixels.
  """
  brightness, contrast, saturation = strengths
  keys = jax.random.split(rng, 3)
  if brightness:
    image = image + jax.random.uniform(keys[0], (), minval=-brightness,
                                       maxval=brightness)
  if contrast:
    factor = jax.random.uniform(keys[1], (), minval=1 - contrast,
                                maxval=1 + contrast)
    weights = valid[..., None].astype(image.dtype)
    mean = jnp.sum(image * weights) / jnp.maximum(
        jnp.sum(weights) * image.shape[-1], 1)
    image = (image - mean) * factor + mean
  if saturation and image.shape[-1] == 3:
    factor = jax.random.uniform(keys[2], (), minval=1 - saturation,
                                maxval=1 + saturation)
    grey = jnp.sum(image * jnp.asarray(_LUMA), axis=-1, keepdims=True)
    image = (image - grey) * factor + grey
  return jnp.clip(image, 0.0, 1.0)


def augment_example(rng: jax.Array, example: Mapping[str, jax.Array], *,
                    crop_size=None, rotation_degrees: float = 0.0,
                    scale_range: Sequence[float] = (1.0, 1.0),
                    shear: float = 0.0, elastic_sigma: float = 8.0,
                    elastic_alpha: float = 0.0, flip: bool = False,
                    flip_vertical: bool = False,
                    colour_jitter=0.0) -> dict[str, jax.Array]:
  """`augment_batch` for one example (`image` `[H, W, C]`, maps `[H, W]`)."""
  image, mask = example['image'], example['mask']
  in_shape = image.shape[:2]
  out_shape = in_shape if crop_size is None else _pair(crop_size)
  warp_key, colour_key = jax.random.split(rng)
  coords = _source_coordinates(
      warp_key, in_shape, out_shape, rotation_degrees=rotation_degrees,
      scale_range=tuple(scale_range), shear=shear, elastic_sigma=elastic_sigma,
      elastic_alpha=elastic_alpha, flip=flip, flip_vertical=flip_vertical)
  # Valid where the bilinear footprint lies inside the input and the source
  # pixel was valid.
  inside = ((coords[0] >= 0) & (coords[0] <= in_shape[0] - 1) &
            (coords[1] >= 0) & (coords[1] <= in_shape[1] - 1))
  new_mask = jnp.where(inside, _warp(mask, coords, order=0), 0)
  out = {}
  for key, value in example.items():
    if key == 'mask':
      out[key] = new_mask.astype(mask.dtype)
    elif key == 'image':
      warped = _warp(value, coords, order=1)
      strengths = _jitter_strengths(colour_jitter)
      if any(strengths):
        warped = _colour_jitter(colour_key, warped, inside, strengths)
      out[key] = jnp.where(inside[..., None], warped, 0).astype(value.dtype)
    else:
      warped = _warp(value, coords, order=0)
      valid = inside.reshape(inside.shape + (1,) * (value.ndim - 2))
      out[key] = jnp.where(valid, warped, 0).astype(value.dtype)
  return out


def augment_batch(rng: jax.Array, batch: Mapping[str, jax.Array], *,
                  crop_size=None, rotation_degrees: float = 0.0,
                  scale_range: Sequence[float] = (1.0, 1.0),
                  shear: float = 0.0, elastic_sigma: float = 8.0,
                  elastic_alpha: float = 0.0, flip: bool = False,
                  flip_vertical: bool = False,
                  colour_jitter=0.0) -> dict[str, jax.Array]:
  """Augments a batch; one independent random warp per example.

  Args:
    rng: JAX PRNG key.
    batch: `image` float `[B, H, W, C]`, `mask` float `[B, H, W]` (1 = valid)
      and any label maps `[B, H, W]` (e.g. `segmentation`), all warped alike.
    crop_size: output (height, width) or int; the window's position is
      uniform over the input (a crop larger than the input is padded). None
      keeps the input size and position.
    rotation_degrees: rotation angle drawn uniformly in +-this.
    scale_range: (low, high) zoom, drawn log-uniformly; 2 = content twice as
      large.
    shear: shear angle in degrees, drawn uniformly in +-this.
    elastic_sigma: smoothness (Gaussian sigma, output pixels) of the elastic
      displacement.
    elastic_alpha: RMS elastic displacement per axis, in pixels; 0 = none.
    flip: mirror left-right with probability 1/2.
    flip_vertical: mirror top-bottom with probability 1/2.
    colour_jitter: strength >= 0, or (brightness, contrast, saturation):
      brightness shift uniform in +-b, contrast and saturation (RGB only)
      factors uniform in 1 +- c / 1 +- s; the image is clipped to [0, 1].

  Returns:
    A dict with the same keys: `image` `[B, h, w, C]`, maps `[B, h, w]`.
  """
  for key in ('image', 'mask'):
    if key not in batch:
      raise ValueError(f'augment_batch needs batch[{key!r}]; got keys '
                       f'{sorted(batch)}')
  batch_shape = batch['image'].shape[:3]
  for key, value in batch.items():
    if value.shape[:3] != batch_shape:
      raise ValueError(f'batch[{key!r}] has shape {value.shape}, expected '
                       f'{batch_shape} leading (image [B, H, W, C])')
  if not 0 < scale_range[0] <= scale_range[1]:
    raise ValueError(f'scale_range must be 0 < low <= high, got {scale_range}')
  if elastic_alpha and elastic_sigma <= 0:
    raise ValueError(f'elastic_sigma must be > 0, got {elastic_sigma}')
  keys = jax.random.split(rng, batch_shape[0])
  one = lambda key, example: augment_example(
      key, example, crop_size=crop_size, rotation_degrees=rotation_degrees,
      scale_range=scale_range, shear=shear, elastic_sigma=elastic_sigma,
      elastic_alpha=elastic_alpha, flip=flip, flip_vertical=flip_vertical,
      colour_jitter=colour_jitter)
  return jax.vmap(one)(keys, dict(batch))
