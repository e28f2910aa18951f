"""Validation shared by the TFDS builders that read raw files from `manual_dir`.

Every problem with the raw files raises one `RawDataError` whose message names
the file (or directory) and what is wrong with it. The builders raise while
TFDS writes into a temporary directory, so a failed build leaves no prepared
data set behind.
"""
import pathlib
from typing import Collection

import numpy as np

from datasets import image_codec


class RawDataError(ValueError):
  """Raw data set files are missing, unreadable or inconsistent."""


def manual_dir(dl_manager) -> pathlib.Path:
  """The builder's manual directory as a `pathlib.Path`.

  TFDS raises `AssertionError` for a missing or empty manual directory (with
  the path and the builder's download instructions in its message); this
  raises that message as a `RawDataError`.

  Args:
    dl_manager: the `tfds.download.DownloadManager` given to
      `_split_generators`.
  """
  try:
    return pathlib.Path(dl_manager.manual_dir)
  except AssertionError as e:
    raise RawDataError(str(e)) from e


def require_dir(path: pathlib.Path, what: str) -> pathlib.Path:
  """Returns `path` if it is a directory, else raises naming it and `what`."""
  if not path.is_dir():
    raise RawDataError(f'{path}: missing directory ({what})')
  return path


def require_file(path: pathlib.Path, what: str) -> pathlib.Path:
  """Returns `path` if it is a file, else raises naming it and `what`."""
  if not path.is_file():
    raise RawDataError(f'{path}: missing file ({what})')
  return path


def read_png(path: pathlib.Path) -> np.ndarray:
  """Decodes a PNG file; an unreadable file raises `RawDataError` naming it."""
  try:
    return image_codec.read_png(path)
  except image_codec.ImageDecodeError as e:  # Its message names the file.
    raise RawDataError(str(e)) from e
  except OSError as e:
    raise RawDataError(f'{path}: cannot read the file ({e})') from e


def as_grayscale_uint8(array: np.ndarray, path: pathlib.Path) -> np.ndarray:
  """Decoded single-channel image -> uint8 `[H, W]`.

  Accepts 8-bit grayscale, 1-bit (bool, mapped to 0/255) and RGB(A) images whose
  colour channels are equal (grayscale saved as RGB); anything else raises.

  Args:
    array: `[H, W]` or `[H, W, C]` as returned by `read_png`.
    path: the file it came from, for the error message.

  Returns:
    uint8 `[H, W]`.
  """
  if array.dtype == np.bool_:
    return array.astype(np.uint8) * 255
  if array.ndim == 3 and array.shape[-1] in (3, 4):
    colour = array[..., :3]
    if not (np.array_equal(colour[..., 0], colour[..., 1])
            and np.array_equal(colour[..., 0], colour[..., 2])):
      raise RawDataError(
          f'{path}: expected a grayscale image, got {array.shape[-1]} '
          'channels with different values')
    array = colour[..., 0]
  if array.ndim != 2 or array.dtype != np.uint8:
    raise RawDataError(
        f'{path}: expected an 8-bit grayscale image, got shape {array.shape} '
        f'and dtype {array.dtype}')
  return array


def check_shape(array: np.ndarray, shape: tuple[int, ...],
                path: pathlib.Path, what: str) -> None:
  """Raises naming `path` when `array.shape != shape`."""
  if tuple(array.shape) != tuple(shape):
    raise RawDataError(
        f'{path}: {what} has shape {tuple(array.shape)}, expected '
        f'{tuple(shape)}')


def check_values(array: np.ndarray, allowed: Collection[int],
                 path: pathlib.Path, what: str) -> None:
  """Raises naming `path` and the offending values when any is not allowed."""
  present = np.unique(array)
  bad = np.setdiff1d(present, np.asarray(sorted(allowed)))
  if bad.size:
    shown = ', '.join(str(v) for v in bad[:10])
    raise RawDataError(
        f'{path}: {what} holds values outside {sorted(allowed)}: {shown}'
        + (' ...' if bad.size > 10 else ''))


def check_not_empty(examples: Collection, split: str, where: str) -> None:
  """Raises when a split would hold no examples (TFDS would store it empty)."""
  if not examples:
    raise RawDataError(f'{where}: no examples found for split {split!r}')
