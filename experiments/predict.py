r"""Samples segmentations of one image with a trained model.

```
python -m experiments.predict --workdir=RUN --image=scan.png \
    --num_samples=16 --out=DIR [--resize=crop|pad] [--seed=0]
```

Reads a PNG or JPEG (8 or 16-bit grey, 8-bit colour), a TIFF (`tifffile`)
or a `.npy` array, loads the run with `hpunet_jax.load`, and draws
`--num_samples` segmentations with `TrainedRun.probabilities` (encoder once,
decoder per sample): the image is converted to the model's channels and
scaled as the training pipeline scales its dtype (`hpunet_jax.images`:
unsigned integers / dtype maximum, floats as they are, in [0, 1]). The
model sees `config.image_size`; an image of another size is refused unless
`--resize=crop` (centre crop) or `--resize=pad` (centred zero padding) says
how to fit it.

Writes into `--out` (`experiments.prediction_outputs`), a new or empty folder
or one holding only the files of an earlier prediction (those are removed
first, with a message; any other file makes it refuse):
  sample_XX.png         uint8 class ids per pixel (padding = 255).
  sample_XX_colour.png  the same, coloured (class 0 black, padding grey).
  mean_std.png          mean prediction and per-pixel std: binary models the
                        std over samples of the foreground probability,
                        multi-class models the std of the one-hot samples
                        (`eval.figures.one_hot_std`).
  std.npy               that std, float32 `[H, W]`, NaN on padding.
  mean_probs.npy        mean of the sample softmaxes, float32 `[H, W, K]`.
  entropy.png / .npy    per-pixel entropy (nats) of the mean softmax.
  contact_sheet.png     image, samples, std and entropy together.
"""
import os
import sys
from typing import Dict, List, Optional, Sequence

# One OpenBLAS thread (see experiments/train.py); before NumPy loads it.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from eval import figures
from experiments import output_folder
from experiments import prediction_outputs
import hpunet_jax
from hpunet_jax.runtime import checkpointing
from hpunet_jax.runtime import compilation_cache


class ImageError(ValueError):
  """The input image cannot be read or does not fit the model."""


# `--out` or `--num_samples` cannot be used (see `output_folder`).
OutputError = output_folder.OutputError


# Pillow modes read as they are: grey 8 / 16 / 32 bits, 8-bit colour.
_GREY_MODES = ('L', 'I;16', 'I;16B', 'I;16L', 'I', 'F')
_COLOUR_MODES = ('RGB', 'RGBA', 'RGBX', 'P', 'PA', 'CMYK', 'YCbCr')


def _png_is_16_bit_colour(path: str) -> bool:
  """Whether a PNG file is 16-bit RGB(A): Pillow would read it as 8 bits."""
  with open(path, 'rb') as f:
    header = f.read(29)
  # Signature (8), IHDR length and type (8), width, height (8), bit depth,
  # colour type (2: RGB, 6: RGBA).
  return (header[:8] == b'\x89PNG\r\n\x1a\n' and len(header) >= 26
          and header[24] == 16 and header[25] in (2, 6))


def read_image(path: str) -> np.ndarray:
  """An image file -> `[H, W, C]` in its stored dtype, C = 1 or 3.

  PNG / JPEG / other Pillow formats: grey (8, 16 or 32 bits) or 8-bit colour;
  alpha is dropped and palette images are expanded to RGB. 16-bit colour
  PNGs are refused (Pillow reads them as 8 bits). `.tif` / `.tiff`:
  `[H, W]` or `[H, W, C]` pages read by `tifffile`. `.npy`: an `[H, W]` or
  `[H, W, C]` array.

  Raises:
    FileNotFoundError: `path` does not exist.
    ImageError: not an image that can be read as above.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such image file.')
  extension = os.path.splitext(path)[1].lower()
  try:
    if extension == '.npy':
      array = np.load(path, allow_pickle=False)
    elif extension in ('.tif', '.tiff'):
      import tifffile  # pylint: disable=g-import-not-at-top
      array = tifffile.imread(path)
    else:
      array = _read_with_pillow(path)
  except ImageError:
    raise
  except (Image.UnidentifiedImageError, Image.DecompressionBombError,
          OSError, SyntaxError, ValueError) as error:
    # Pillow raises OSError for truncated data, SyntaxError for some broken
    # headers; numpy and tifffile raise ValueError for bad files.
    raise ImageError(f'{path}: cannot read the image ({error}).') from error
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or array.shape[-1] not in (1, 3):
    raise ImageError(f'{path}: expected a grey or colour image [H, W] or '
                     f'[H, W, 1 or 3], got shape {array.shape}.')
  return array


def _read_with_pillow(path: str) -> np.ndarray:
  if _png_is_16_bit_colour(path):
    raise ImageError(f'{path}: 16-bit colour PNGs cannot be read without '
                     'losing bits; save the image as .npy or TIFF.')
  with Image.open(path) as image:
    image.load()
    mode = image.mode
    if mode in ('1', 'LA'):
      image = image.convert('L')
    elif mode in _COLOUR_MODES:
      image = image.convert('RGB')
    elif mode not in _GREY_MODES:
      raise ImageError(f'{path}: unsupported pixel format {mode!r}; expected '
                       'a grey or colour image.')
    array = np.asarray(image)
  return array.astype(np.uint16) if mode.startswith('I;16') else array


def predictive_entropy(mean_probs: np.ndarray) -> np.ndarray:
  """Entropy in nats of per-pixel class probabilities `[H, W, K]` -> `[H, W]`.
  """
  probs = np.asarray(mean_probs, np.float64)
  # 0 * log(0) = 0: the clip only keeps the log finite.
  return -np.sum(probs * np.log(np.clip(probs, 1e-300, None)), axis=-1)


def sample_statistics(probs: np.ndarray) -> Dict[str, np.ndarray]:
  """Summaries of N sampled softmaxes `[N, H, W, K]`.

  Returns:
    `labels` int `[N, H, W]` (argmax), `mean_probs` `[H, W, K]`, `std`
    `[H, W]` (binary: std over samples of p(class 1); multi-class:
    `figures.one_hot_std` of the labels) and `entropy` `[H, W]` of
    `mean_probs`.
  """
  probs = np.asarray(probs, np.float64)
  if probs.ndim != 4:
    raise ValueError(f'probs must be [N, H, W, K], got shape {probs.shape}')
  num_classes = probs.shape[-1]
  labels = np.argmax(probs, axis=-1)
  mean_probs = probs.mean(axis=0)
  if num_classes == 2:
    std = figures.foreground_std(probs[..., 1])
  else:
    std = figures.one_hot_std(labels, num_classes)
  return dict(labels=labels, mean_probs=mean_probs, std=std,
              entropy=predictive_entropy(mean_probs))


def predict(workdir: str, image_path: str, num_samples: int, out_dir: str,
            resize: Optional[str] = None, seed: int = 0) -> List[str]:
  """Restores the newest checkpoint of `workdir`, samples `num_samples`
  segmentations of the image file and writes them to `out_dir`.

  Raises:
    FileNotFoundError: missing image, or no checkpoint in `workdir`.
    ImageError: unreadable image, or a size `resize` cannot fix.
    OutputError: `num_samples` < 1, or an `out_dir` that is a file or holds
      other files than an earlier prediction's.
  """
  if num_samples < 1:
    raise OutputError(f'--num_samples must be >= 1, got {num_samples}.')
  # Before the (slow) restore: fail early.
  stale = output_folder.earlier_outputs(out_dir)
  raw = read_image(image_path)
  run = hpunet_jax.load(workdir)
  try:
    fitted = run.prepare(raw, resize, image_path, resize_hint='--resize={}')
  except ValueError as error:
    raise ImageError(str(error)) from error
  probs = run.probabilities(raw, num_samples, seed, resize)  # [N, H, W, K]
  stats = sample_statistics(probs)
  if stale:
    print(f'Removing {len(stale)} files of an earlier prediction from '
          f'{out_dir}.')
    for path in stale:
      os.remove(path)
  paths = prediction_outputs.write_outputs(out_dir, fitted.image, stats,
                                           fitted.valid)
  print(f'{image_path}: {num_samples} samples from {workdir} '
        f'(step {run.step}) -> {out_dir}')
  return paths


def define_flags() -> None:
  """The command-line flags; defined only when run as a program, so that
  importing this module next to other absl programs (train, run_metrics)
  in one process cannot clash over flag names like --workdir."""
  flags.DEFINE_string('workdir', None, 'Training run directory (holds '
                      'checkpoints/).', required=True)
  flags.DEFINE_string('image', None, 'Input image: PNG or JPEG (8 or 16-bit '
                      'grey, 8-bit colour), TIFF or .npy.',
                      required=True)
  flags.DEFINE_integer('num_samples', 16, 'Samples to draw.')
  flags.DEFINE_string('out', None, 'Output directory.', required=True)
  flags.DEFINE_enum('resize', None, ['crop', 'pad'],
                    "How to fit an image of another size than the model's: "
                    'centre crop or centred zero padding.')
  flags.DEFINE_integer('seed', 0, 'Sampling seed.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  values = flags.FLAGS
  # Compiled samplers from the disk: a second prediction skips compiling
  # (the run's own `compilation_cache_dir` is not known before the load).
  compilation_cache.enable(min_compile_time_s=0.0)
  try:
    predict(values.workdir, values.image, values.num_samples, values.out,
            values.resize, values.seed)
  except (FileNotFoundError, ImageError, OutputError,
          checkpointing.CheckpointError) as error:
    # Expected user errors: one line, no traceback.
    sys.exit(f'predict: {error}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
