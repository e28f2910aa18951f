r"""Samples segmentations of one image with a trained model.

```
python -m experiments.predict --workdir=RUN --image=scan.png \
    --num_samples=16 --out=DIR [--resize=crop|pad] [--seed=0]
```

Reads a PNG / JPEG (8-bit grey or colour), converts it to the model's
channels (`config.model.num_input_channels`), scales it to [0, 1] like the
training pipeline (`datasets.preprocess.image_to_float`) and draws
`--num_samples` segmentations (encoder once, decoder per sample). The model
sees `config.image_size`; an image of another size is refused unless
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
from typing import Dict, List, Optional, Sequence, Tuple

# One OpenBLAS thread (see experiments/train.py); before NumPy loads it.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

from absl import app
from absl import flags
import jax
import numpy as np
from PIL import Image

from datasets import preprocess
from eval import figures
from eval import restore
from experiments import output_folder
from experiments import prediction_outputs
from hpunet_jax.runtime import checkpointing

class ImageError(ValueError):
  """The input image cannot be read or does not fit the model."""


# `--out` or `--num_samples` cannot be used (see `output_folder`).
OutputError = output_folder.OutputError


def read_image(path: str) -> np.ndarray:
  """An 8-bit grey or colour image file -> uint8 `[H, W, C]`, C = 1 or 3.

  Alpha is dropped and palette images are expanded to RGB.

  Raises:
    FileNotFoundError: `path` does not exist.
    ImageError: not an image Pillow can read, or not 8 bits per channel.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such image file.')
  try:
    with Image.open(path) as image:
      image.load()
      mode = image.mode
      if mode in ('1', 'L', 'LA'):
        image = image.convert('L')
      elif mode in ('P', 'PA', 'RGB', 'RGBA', 'RGBX', 'CMYK', 'YCbCr'):
        image = image.convert('RGB')
      else:
        raise ImageError(f'{path}: unsupported pixel format {mode!r}; '
                         'expected an 8-bit grey or colour image.')
      array = np.asarray(image, np.uint8)
  except (Image.UnidentifiedImageError, OSError, SyntaxError) as error:
    # Pillow raises OSError for truncated data, SyntaxError for some broken
    # headers.
    raise ImageError(f'{path}: cannot read the image ({error}).') from error
  return array[..., None] if array.ndim == 2 else array


def convert_channels(image: np.ndarray, num_channels: int) -> np.ndarray:
  """uint8 `[H, W, C]` (C = 1 or 3) -> uint8 `[H, W, num_channels]`.

  Colour -> grey uses the ITU-R 601-2 luma weights (as Pillow's 'L' mode);
  grey -> colour repeats the channel.
  """
  channels = image.shape[-1]
  if channels == num_channels:
    return image
  if channels == 3 and num_channels == 1:
    luma = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None]
  if channels == 1 and num_channels == 3:
    return np.repeat(image, 3, axis=-1)
  raise ImageError(f'cannot convert a {channels}-channel image to the '
                   f"model's {num_channels} channels.")


def normalise_image(image: np.ndarray) -> np.ndarray:
  """uint8 `[H, W, C]` -> float32 in [0, 1], as the training pipeline."""
  return preprocess.image_to_float(image)


def fit_to_size(image: np.ndarray, size: Tuple[int, int],
                resize: Optional[str], name: str = 'image'
                ) -> Tuple[np.ndarray, np.ndarray]:
  """Brings `image` `[H, W, C]` to `size` = (height, width).

  Args:
    image: the image.
    size: what the model needs.
    resize: None (sizes must match), 'crop' (centre crop; the image must be
      at least `size`) or 'pad' (centred zero padding; at most `size`).
    name: how errors name the image (its file).

  Returns:
    `(image [height, width, C], valid bool [height, width])`, valid = False
    on padding.

  Raises:
    ImageError: the sizes differ and `resize` cannot fix it.
  """
  height, width = image.shape[:2]
  target_height, target_width = size
  found = (f'{name} is {height}x{width} (HxW), the model needs '
           f'{target_height}x{target_width}')
  if resize is None:
    if (height, width) != (target_height, target_width):
      raise ImageError(f'{found}: pass --resize=crop (centre crop) or '
                       '--resize=pad (zero padding).')
    return image, np.ones((height, width), bool)
  if resize == 'crop':
    if height < target_height or width < target_width:
      raise ImageError(f'{found}: too small to crop; use --resize=pad.')
    top = (height - target_height) // 2
    left = (width - target_width) // 2
    return (image[top:top + target_height, left:left + target_width],
            np.ones((target_height, target_width), bool))
  if resize == 'pad':
    if height > target_height or width > target_width:
      raise ImageError(f'{found}: too large to pad; use --resize=crop.')
    top = (target_height - height) // 2
    left = (target_width - width) // 2
    padded = np.zeros((target_height, target_width) + image.shape[2:],
                      image.dtype)
    padded[top:top + height, left:left + width] = image
    valid = np.zeros((target_height, target_width), bool)
    valid[top:top + height, left:left + width] = True
    return padded, valid
  raise ValueError(f"resize must be None, 'crop' or 'pad', got {resize!r}")


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


def _model_size(image_size) -> Tuple[int, int]:
  """`config.image_size` (int or (height, width)) -> (height, width)."""
  if isinstance(image_size, int):
    return image_size, image_size
  height, width = image_size
  return int(height), int(width)


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
  config, model, params, step = restore.restore_latest(workdir)
  num_channels = config.model.get('num_input_channels', None) or raw.shape[-1]
  try:
    image = normalise_image(convert_channels(raw, num_channels))
  except ImageError as error:
    raise ImageError(f'{image_path}: {error}') from error
  image, valid = fit_to_size(image, _model_size(config.image_size), resize,
                             name=image_path)
  sample = jax.jit(model.sample, static_argnums=3)
  logits = sample(params, jax.random.PRNGKey(seed), image[None], num_samples)
  probs = np.asarray(jax.nn.softmax(logits[:, 0], axis=-1))  # [N, H, W, K]
  stats = sample_statistics(probs)
  if stale:
    print(f'Removing {len(stale)} files of an earlier prediction from '
          f'{out_dir}.')
    for path in stale:
      os.remove(path)
  paths = prediction_outputs.write_outputs(out_dir, image, stats, valid)
  print(f'{image_path}: {num_samples} samples from {workdir} (step {step}) '
        f'-> {out_dir}')
  return paths


def define_flags() -> None:
  """The command-line flags; defined only when run as a program, so that
  importing this module next to other absl programs (train, run_metrics)
  in one process cannot clash over flag names like --workdir."""
  flags.DEFINE_string('workdir', None, 'Training run directory (holds '
                      'checkpoints/).', required=True)
  flags.DEFINE_string('image', None, 'Input image (PNG or JPEG).',
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
