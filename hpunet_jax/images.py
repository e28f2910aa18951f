"""Images as the model sees them: dtype scaling, channels and size.

The training pipeline (`datasets.preprocess`) and every caller of a trained
model (`hpunet_jax.load`, `experiments.predict`) scale pixels with the same
function, `image_to_float`, so an image given to a trained model is what the
model was trained on:

* unsigned integers are divided by their dtype's maximum (uint8 / 255, the
  PNG-stored training sets; uint16 / 65535 for 16-bit scans);
* booleans become 0 / 1;
* floats are taken as they are and must lie in [0, 1] (the float-stored
  LIDC v1 set); the HPU-Net's first res-block applies ReLU to the raw image,
  so negative values would be silently lost;
* signed integers (e.g. CT in Hounsfield units) are refused: there is no
  scaling the training saw; window them into [0, 1] floats first.
"""
from typing import NamedTuple, Optional, Tuple

import numpy as np

RESIZE_OPTIONS = (None, 'crop', 'pad')


def image_to_float(image: np.ndarray, name: str = 'image') -> np.ndarray:
  """`[H, W, C]` (or any shape) of a numeric dtype -> float32 in [0, 1].

  Raises:
    ValueError: signed integers, non-finite floats or floats outside [0, 1],
      or a non-numeric dtype; the message names `name`.
  """
  image = np.asarray(image)
  dtype = image.dtype
  if dtype == np.bool_:
    return image.astype(np.float32)
  if np.issubdtype(dtype, np.unsignedinteger):
    return image.astype(np.float32) / np.float32(np.iinfo(dtype).max)
  if np.issubdtype(dtype, np.floating):
    image = image.astype(np.float32)
    if image.size and not np.all(np.isfinite(image)):
      raise ValueError(f'{name} has non-finite pixels (NaN or inf).')
    if image.size and (image.min() < 0 or image.max() > 1):
      raise ValueError(
          f'{name} is {dtype} with values in [{image.min():g}, '
          f'{image.max():g}]; float images must lie in [0, 1], as in '
          'training (integer images are scaled by their dtype maximum).')
    return image
  if np.issubdtype(dtype, np.signedinteger):
    raise ValueError(
        f'{name} is {dtype}: signed integers have no scaling the model was '
        'trained with; give unsigned integers (scaled by the dtype maximum) '
        'or floats in [0, 1] (e.g. a CT slice windowed to [0, 1]).')
  raise ValueError(f'{name} has dtype {dtype}, not a numeric image.')


def to_channels(image: np.ndarray, num_channels: int,
                name: str = 'image') -> np.ndarray:
  """`[H, W]` or `[H, W, C]` (C = 1 or 3) -> `[H, W, num_channels]`.

  Colour -> grey uses the ITU-R 601-2 luma weights (as Pillow's 'L' mode),
  rounded back to the integer dtype for integer images; grey -> colour
  repeats the channel.

  Raises:
    ValueError: another rank, or channels that cannot be converted.
  """
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3:
    raise ValueError(f'{name} must be [H, W] or [H, W, C], got shape '
                     f'{image.shape}.')
  channels = image.shape[-1]
  if channels == num_channels:
    return image
  if channels == 3 and num_channels == 1:
    luma = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    if np.issubdtype(image.dtype, np.integer):
      info = np.iinfo(image.dtype)
      luma = np.clip(np.round(luma), info.min, info.max)
    return luma.astype(image.dtype)[..., None]
  if channels == 1 and num_channels == 3:
    return np.repeat(image, 3, axis=-1)
  raise ValueError(f"cannot convert {name}'s {channels} channels to the "
                   f"model's {num_channels}.")


class FittedImage(NamedTuple):
  """An image brought to the model's size.

  Attributes:
    image: `[height, width, C]`.
    valid: bool `[height, width]`, False on padding.
  """
  image: np.ndarray
  valid: np.ndarray


def fit_to_size(image: np.ndarray, size: Tuple[int, int],
                resize: Optional[str] = None, name: str = 'image',
                resize_hint: str = "resize='{}'") -> FittedImage:
  """Brings `image` `[H, W, C]` to `size` = (height, width).

  Args:
    image: the image.
    size: what the model needs.
    resize: None (sizes must match), 'crop' (centre crop; the image must be
      at least `size`) or 'pad' (centred zero padding; at most `size`).
    name: how errors name the image (e.g. its file).
    resize_hint: how errors spell the option, `{}` the value (a command
      line: '--resize={}').

  Raises:
    ValueError: the sizes differ and `resize` cannot fix it, or an unknown
      `resize`.
  """
  if resize not in RESIZE_OPTIONS:
    raise ValueError(f"resize must be None, 'crop' or 'pad', got {resize!r}.")
  height, width = image.shape[:2]
  target_height, target_width = size
  found = (f'{name} is {height}x{width} (HxW), the model needs '
           f'{target_height}x{target_width}')
  crop, pad = resize_hint.format('crop'), resize_hint.format('pad')
  if (height, width) == (target_height, target_width):
    return FittedImage(image, np.ones((height, width), bool))
  if resize is None:
    raise ValueError(f'{found}: pass {crop} (centre crop) or {pad} (zero '
                     'padding).')
  if resize == 'crop':
    if height < target_height or width < target_width:
      raise ValueError(f'{found}: too small to crop; use {pad}.')
    top = (height - target_height) // 2
    left = (width - target_width) // 2
    return FittedImage(image[top:top + target_height, left:left + target_width],
                       np.ones((target_height, target_width), bool))
  if height > target_height or width > target_width:
    raise ValueError(f'{found}: too large to pad; use {crop}.')
  top = (target_height - height) // 2
  left = (target_width - width) // 2
  padded = np.zeros((target_height, target_width) + image.shape[2:],
                    image.dtype)
  padded[top:top + height, left:left + width] = image
  valid = np.zeros((target_height, target_width), bool)
  valid[top:top + height, left:left + width] = True
  return FittedImage(padded, valid)


def model_size(image_size) -> Tuple[int, int]:
  """A config's `image_size` (int or (height, width)) -> (height, width)."""
  if isinstance(image_size, int):
    return image_size, image_size
  height, width = image_size
  return int(height), int(width)
