"""PNG encoding and decoding with Pillow (TFDS's numpy image encoding needs TF).

TFDS `Image` features accept PNG bytes, so every builder yields images through
`encode_png`; readers that get raw bytes back use `decode_png`.
"""
import io

import numpy as np
from PIL import Image


class ImageDecodeError(ValueError):
  """An image file could not be read; the message names the file."""


def encode_png(array: np.ndarray) -> bytes:
  """uint8 or uint16 `[H, W]` / `[H, W, 1]` / `[H, W, 3]` array -> PNG bytes."""
  array = np.asarray(array)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.dtype not in (np.uint8, np.uint16):
    raise ValueError(f'encode_png takes uint8 or uint16, got {array.dtype}')
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG')
  return buffer.getvalue()


def decode_png(data: bytes, name: str = '<bytes>') -> np.ndarray:
  """PNG bytes -> array with the stored bit depth; `name` goes into errors."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      return np.asarray(image)
  except Exception as e:  # Pillow raises several types for corrupt data.
    raise ImageDecodeError(f'{name}: not a readable PNG ({e})') from e


def read_png(path) -> np.ndarray:
  """Reads a PNG file into an array; a corrupt file names its path."""
  with open(path, 'rb') as f:
    return decode_png(f.read(), name=str(path))
