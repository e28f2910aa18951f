"""The files `experiments/predict.py` writes: label maps, arrays and figures.

`write_outputs` takes `predict.sample_statistics` of one image and writes the
files listed in `experiments/predict.py`'s docstring.
"""
import os
from typing import Dict, List

import matplotlib
from matplotlib import figure as mpl_figure
import numpy as np
from PIL import Image

from eval import figures

# Class id written on padded pixels of the sample_XX.png label maps.
PADDING_LABEL = 255


def _hide_ticks(ax):
  ax.set_xticks([])
  ax.set_yticks([])


def _heatmap(fig, ax, array, valid, title: str, vmax: float, cmap: str):
  """A `[H, W]` map on `[0, vmax]` with a colour bar; padding grey."""
  colours = matplotlib.colormaps[cmap].with_extremes(
      bad=figures.PADDING_COLOUR)
  shown = ax.imshow(np.ma.masked_array(array, mask=~valid), cmap=colours,
                    vmin=0, vmax=vmax, interpolation='nearest')
  fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
  ax.set_title(title, fontsize=8)
  _hide_ticks(ax)


def _show_image(ax, image: np.ndarray, valid: np.ndarray, title: str):
  """float `[H, W, C]` image in [0, 1]; padding grey."""
  rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
  rgb = np.where(valid[..., None], np.clip(rgb, 0, 1), figures.PADDING_COLOUR)
  ax.imshow(rgb, interpolation='nearest')
  ax.set_title(title, fontsize=8)
  _hide_ticks(ax)


def _std_scale(num_classes: int) -> float:
  # Binary std of a probability is <= 0.5; one-hot std is < 1.
  return 0.5 if num_classes == 2 else 1.0


def _std_title(num_classes: int) -> str:
  return ('std of p(foreground)' if num_classes == 2
          else 'std of one-hot samples')


def _mean_panel(ax, mean_probs: np.ndarray, valid: np.ndarray, fig):
  """Binary: mean foreground probability; multi-class: argmax of the mean
  softmax, coloured."""
  if mean_probs.shape[-1] == 2:
    _heatmap(fig, ax, mean_probs[..., 1], valid, 'mean p(foreground)', 1.0,
             'viridis')
  else:
    ax.imshow(figures.colourise_labels(np.argmax(mean_probs, -1), valid),
              interpolation='nearest')
    ax.set_title('argmax of mean softmax', fontsize=8)
    _hide_ticks(ax)


def write_outputs(out_dir: str, image: np.ndarray,
                  stats: Dict[str, np.ndarray], valid: np.ndarray,
                  num_sheet_samples: int = 16) -> List[str]:
  """Writes the files listed in `experiments/predict.py`'s docstring.

  Args:
    out_dir: output folder (created).
    image: float `[H, W, C]` model input.
    stats: `sample_statistics` output.
    valid: bool `[H, W]`, False on padding.
    num_sheet_samples: samples shown on the contact sheet.

  Returns:
    The written paths.
  """
  os.makedirs(out_dir, exist_ok=True)
  labels, mean_probs = stats['labels'], stats['mean_probs']
  num_classes = mean_probs.shape[-1]
  if num_classes > PADDING_LABEL:
    raise ValueError(f'{num_classes} classes do not fit the uint8 label maps.')
  paths = []

  def path_of(name):
    paths.append(os.path.join(out_dir, name))
    return paths[-1]

  for index, sample in enumerate(labels):
    ids = np.where(valid, sample, PADDING_LABEL).astype(np.uint8)
    Image.fromarray(ids).save(path_of(f'sample_{index:02d}.png'))
    Image.fromarray(figures.colourise_labels(sample, valid)).save(
        path_of(f'sample_{index:02d}_colour.png'))
  std = np.where(valid, stats['std'], np.nan).astype(np.float32)
  entropy = np.where(valid, stats['entropy'], np.nan).astype(np.float32)
  np.save(path_of('std.npy'), std)
  np.save(path_of('entropy.npy'), entropy)
  np.save(path_of('mean_probs.npy'), mean_probs.astype(np.float32))
  max_entropy = float(np.log(num_classes))

  fig = mpl_figure.Figure(figsize=(7.5, 3.2))
  mean_ax, std_ax = fig.subplots(1, 2)
  _mean_panel(mean_ax, mean_probs, valid, fig)
  _heatmap(fig, std_ax, stats['std'], valid, _std_title(num_classes),
           _std_scale(num_classes), 'magma')
  fig.tight_layout()
  fig.savefig(path_of('mean_std.png'), dpi=100)

  fig = mpl_figure.Figure(figsize=(4.0, 3.2))
  _heatmap(fig, fig.subplots(), stats['entropy'], valid,
           'entropy of mean softmax (nats)', max_entropy, 'magma')
  fig.tight_layout()
  fig.savefig(path_of('entropy.png'), dpi=100)

  # Contact sheet: image, mean, std, entropy on top, samples below.
  shown = labels[:num_sheet_samples]
  num_cols = max(4, min(len(shown), 8))
  num_rows = 1 + -(-len(shown) // num_cols)
  fig = mpl_figure.Figure(figsize=(2.0 * num_cols, 2.0 * num_rows))
  axes = np.asarray(fig.subplots(num_rows, num_cols, squeeze=False))
  for ax in axes.flat:
    ax.set_axis_off()
  top = axes[0]
  for ax in top[:4]:
    ax.set_axis_on()
  _show_image(top[0], image, valid, 'input')
  _mean_panel(top[1], mean_probs, valid, fig)
  _heatmap(fig, top[2], stats['std'], valid, _std_title(num_classes),
           _std_scale(num_classes), 'magma')
  _heatmap(fig, top[3], stats['entropy'], valid, 'entropy (nats)',
           max_entropy, 'magma')
  for index, sample in enumerate(shown):
    ax = axes[1 + index // num_cols, index % num_cols]
    ax.imshow(figures.colourise_labels(sample, valid),
              interpolation='nearest')
    ax.set_title(f'sample {index}', fontsize=8)
  fig.tight_layout()
  fig.savefig(path_of('contact_sheet.png'), dpi=100)
  return paths
