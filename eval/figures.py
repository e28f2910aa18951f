"""Evaluation figures (paper Fig. 2, 3 / 15, 4, 7 / 8) as PNG files.

`write_figures` is called by `eval.evaluation.evaluate` with the arrays the
evaluator kept for its first few images (`EvalResult.examples`):

- `samples.png` (lesion tasks, Fig. 2): per image the graders, their
  posterior-mean reconstructions, samples and the per-pixel std of the samples.
- `levels.png` (HPU-Net, Fig. 3 / 15): samples and std maps when sampling the
  full hierarchy, only the most global level, or only the most local level
  (the other levels at their prior mean).
- `clustering.png` (instance tasks, Fig. 4): target, reconstruction, Hamming
  clustering of the samples and a few samples, categorical colours.
- `extrapolation.png` (masked images, Fig. 5): image, masked input, target,
  reconstruction, samples and their label disagreement, the border of the
  hidden region drawn dashed on each.
- `training_curves.png` (Fig. 7 / 8, `eval.training_curves`): reconstruction
  loss per pixel (and kappa), the GECO Lagrange multiplier and the KL terms
  over training, read from `<workdir>/metrics.jsonl`.

Every continuous map (std, disagreement) has a colour bar naming the
quantity, its ticks giving the range. Images, graders and samples are
numbered from 0, as their array indices, `per_image.npz` and predict's
`sample_XX` files. Each `make_*_figure` returns the `Figure` (for tests);
`write_figures` saves them and reports its progress. A figure whose inputs
are missing is skipped. Rendering uses matplotlib's object-oriented API
(`matplotlib.figure.Figure`, saved through the Agg canvas), so no display
and no pyplot global state are involved.

Label colours (`colourise_labels`) are shared with `experiments.predict`.
"""
import colorsys
import os
from typing import Dict, List, Optional, Sequence, Tuple

from absl import logging
import jax
import jax.numpy as jnp
from matplotlib import figure as mpl_figure
import numpy as np

from eval import training_curves
from hpunet_jax.runtime import metric_writers
from hpunet_jax.runtime import progress

# Background (label 0) and padding colours of categorical label maps, RGB.
BACKGROUND_COLOUR = (0.0, 0.0, 0.0)
PADDING_COLOUR = (0.5, 0.5, 0.5)
_GOLDEN_RATIO_CONJUGATE = 0.6180339887498949


def label_palette(num_labels: int) -> np.ndarray:
  """RGB colours for labels `0..num_labels-1`, float `[num_labels, 3]`.

  Label 0 is black; the others step around the hue circle by the golden
  ratio, so neighbouring ids get clearly different colours and no colour
  repeats, however many ids there are.
  """
  palette = np.zeros((max(int(num_labels), 1), 3), np.float64)
  palette[0] = BACKGROUND_COLOUR
  for label in range(1, len(palette)):
    hue = (label * _GOLDEN_RATIO_CONJUGATE) % 1.0
    value = (1.0, 0.8, 0.65)[label % 3]
    palette[label] = colorsys.hsv_to_rgb(hue, 0.85, value)
  return palette


def colourise_labels(labels: np.ndarray,
                     valid: Optional[np.ndarray] = None) -> np.ndarray:
  """Integer label map `[..., H, W]` -> uint8 RGB `[..., H, W, 3]`.

  Args:
    labels: non-negative integer labels; 0 (background) is black.
    valid: optional bool `[H, W]`; False pixels (padding) are grey.
  """
  labels = np.asarray(labels)
  if labels.size and labels.min() < 0:
    raise ValueError(f'labels must be >= 0, got minimum {labels.min()}')
  palette = label_palette(int(labels.max(initial=0)) + 1)
  rgb = palette[labels]
  if valid is not None:
    rgb = np.where(np.asarray(valid, bool)[..., None], rgb, PADDING_COLOUR)
  return np.round(rgb * 255).astype(np.uint8)


def one_hot_std(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Per-pixel std of one-hot samples, `[N, H, W]` int -> float `[H, W]`.

  The square root of the summed per-class variances, `sqrt(1 - sum_k
  p_k^2)` with `p_k` the fraction of samples choosing class k: 0 where all
  samples agree. For binary maps the plain std of the foreground (`p(1-p)`
  under the root) is the usual choice; `foreground_std` gives that.
  """
  labels = np.asarray(labels)
  if labels.ndim != 3:
    raise ValueError(f'labels must be [N, H, W], got shape {labels.shape}')
  frequencies = np.stack([np.mean(labels == k, axis=0)
                          for k in range(num_classes)], axis=-1)
  return np.sqrt(np.clip(1.0 - np.sum(frequencies**2, axis=-1), 0.0, None))


def foreground_std(samples: np.ndarray) -> np.ndarray:
  """Per-pixel std over samples `[N, H, W]` (bool or probabilities)."""
  return np.std(np.asarray(samples, np.float64), axis=0)


def _display_image(image: np.ndarray) -> Tuple[np.ndarray, Optional[str]]:
  """`[H, W, C]` image -> (array for imshow, colour map): grey for one
  channel, RGB for three, else the first channel; scaled to [0, 1]."""
  image = np.asarray(image, np.float64)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] != 3:
    image = image[..., 0]
  low, high = np.nanmin(image), np.nanmax(image)
  image = (image - low) / (high - low) if high > low else np.zeros_like(image)
  return image, ('gray' if image.ndim == 2 else None)


def _new_figure(num_rows: int, num_cols: int, cell_inches: float = 1.3):
  """A figure with a `[num_rows, num_cols]` grid of axes without ticks."""
  fig = mpl_figure.Figure(figsize=(cell_inches * num_cols,
                                   cell_inches * num_rows + 0.4))
  axes = np.asarray(fig.subplots(num_rows, num_cols, squeeze=False))
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  return fig, axes


def _show(ax, array, title: str = '', cmap: Optional[str] = None, **kwargs):
  shown = ax.imshow(array, cmap=cmap, interpolation='nearest', **kwargs)
  if title:
    ax.set_title(title, fontsize=7)
  return shown


def _show_binary(ax, mask, title: str = ''):
  _show(ax, np.asarray(mask, np.float64), title, cmap='gray', vmin=0, vmax=1)


def _show_std(fig, ax, std, title: str, bar_label: str, vmax: float = 0.5):
  """A std-like map on a fixed scale `[0, vmax]` with a labelled colour bar
  (binary std <= 0.5, one-hot std and disagreement < 1)."""
  shown = _show(ax, std, title, cmap='magma', vmin=0, vmax=vmax)
  bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
  bar.set_label(bar_label, fontsize=6)
  bar.ax.tick_params(labelsize=5)
  return shown


def _save(fig, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


# Colour-bar labels: the quantity (unitless; the bar's ticks give its range,
# 0-0.5 for binary std, 0-1 for the others). Short, to fit one row.
BINARY_STD_LABEL = 'std over samples'
ONE_HOT_STD_LABEL = 'one-hot std'
DISAGREEMENT_LABEL = 'share of pairs differing'


def _row_titles(index: int):
  """Column titles on the first row only (columns mean the same in every
  row)."""
  return (lambda text: text) if index == 0 else (lambda text: '')


def make_samples_figure(examples: Sequence[Dict[str, np.ndarray]],
                        num_shown_samples: int = 8) -> mpl_figure.Figure:
  """Fig. 2: per lesion example a row of image, graders, reconstructions,
  `num_shown_samples` samples and the std of all samples. Images, graders
  and samples are numbered from 0, as their array indices (and predict's
  `sample_XX` files)."""
  num_graders = max(len(e['graders']) for e in examples)
  num_shown = min(num_shown_samples, max(len(e['samples']) for e in examples))
  num_cols = 1 + 2 * num_graders + num_shown + 1
  fig, axes = _new_figure(len(examples), num_cols)
  for index, (row, example) in enumerate(zip(axes, examples)):
    title = _row_titles(index)
    image, cmap = _display_image(example['image'])
    _show(row[0], image, title('image'), cmap)
    row[0].set_ylabel(f'image {index}', fontsize=7)
    graders, recon = example['graders'], example['recon']
    samples = np.asarray(example['samples'])
    for g in range(num_graders):
      if g < len(graders):
        _show_binary(row[1 + g], graders[g], title(f'grader {g}'))
        _show_binary(row[1 + num_graders + g], recon[g],
                     title(f'recon. {g}'))
    for s in range(min(num_shown, len(samples))):
      _show_binary(row[1 + 2 * num_graders + s], samples[s],
                   title(f'sample {s}'))
    _show_std(fig, row[-1], foreground_std(samples),
              title(f'std ({len(samples)} samples)'), BINARY_STD_LABEL)
  fig.suptitle('Graders, posterior-mean reconstructions and prior samples',
               fontsize=9)
  return fig


def level_settings(num_latent_levels: int) -> List[Tuple[str, Tuple[bool,
                                                                    ...]]]:
  """`(title, mean_levels)` for Fig. 3 / 15: sample all levels, only the
  most global (coarsest) one, only the most local (finest) one."""
  num = num_latent_levels
  return [('full hierarchy', (False,) * num),
          ('only global level', (False,) + (True,) * (num - 1)),
          ('only local level', (True,) * (num - 1) + (False,))]


def make_levels_figure(config, params, model, images: np.ndarray,
                       num_samples: int = 8) -> mpl_figure.Figure:
  """Fig. 3 / 15: for each image and level setting a row of samples and the
  std map; `images` float `[B, H, W, C]`. Rows are labelled with the image
  (its index among the evaluated images) and the level setting."""
  # `mean_levels` is traced: one compilation for the three settings.
  sample = jax.jit(model.sample, static_argnums=3)
  settings = level_settings(model.num_latent_levels)
  key = jax.random.PRNGKey(config.seed)
  rows = []  # (image index, title, labels [N, H, W], num classes)
  for title, mean_levels in settings:
    key, sample_key = jax.random.split(key)
    logits = np.asarray(sample(params, sample_key, images, num_samples,
                               jnp.asarray(mean_levels)))  # [N, B, H, W, K]
    labels = np.argmax(logits, axis=-1)
    rows.extend((b, title, labels[:, b], logits.shape[-1])
                for b in range(len(images)))
  rows.sort(key=lambda row: row[0])  # Group the settings of one image.
  fig, axes = _new_figure(len(rows), num_samples + 2)
  for index, (ax_row, (b, setting, labels, num_classes)) in enumerate(
      zip(axes, rows)):
    title = _row_titles(index)
    image, cmap = _display_image(images[b])
    _show(ax_row[0], image, title('image'), cmap)
    ax_row[0].set_ylabel(f'image {b}\n{setting}', fontsize=7)
    for s in range(num_samples):
      if num_classes == 2:
        _show_binary(ax_row[1 + s], labels[s], title(f'sample {s}'))
      else:
        _show(ax_row[1 + s], colourise_labels(labels[s]),
              title(f'sample {s}'))
    if num_classes == 2:
      _show_std(fig, ax_row[-1], foreground_std(labels == 1), title('std'),
                BINARY_STD_LABEL)
    else:
      _show_std(fig, ax_row[-1], one_hot_std(labels, num_classes),
                title('one-hot std'), ONE_HOT_STD_LABEL, vmax=1.0)
  fig.suptitle('Samples from the full hierarchy, the most global and the most '
               'local latent level (others at the prior mean)', fontsize=9)
  return fig


def make_clustering_figure(examples: Sequence[Dict[str, np.ndarray]],
                           num_shown_samples: int = 6) -> mpl_figure.Figure:
  """Fig. 4: per instance example image, target, reconstruction, clustering
  and `num_shown_samples` samples (categorical colours, background black)."""
  num_shown = min(num_shown_samples, max(len(e['samples']) for e in examples))
  fig, axes = _new_figure(len(examples), 4 + num_shown)
  for index, (row, example) in enumerate(zip(axes, examples)):
    title = _row_titles(index)
    image, cmap = _display_image(example['image'])
    _show(row[0], image, title('image'), cmap)
    row[0].set_ylabel(f'image {index}', fontsize=7)
    _show(row[1], colourise_labels(example['target']), title('target'))
    _show(row[2], colourise_labels(example['recon']), title('recon.'))
    _show(row[3], colourise_labels(example['clusters']), title('clustering'))
    samples = np.asarray(example['samples'])
    for s in range(min(num_shown, len(samples))):
      _show(row[4 + s], colourise_labels(samples[s]), title(f'sample {s}'))
  fig.suptitle('Instance segmentation: target, reconstruction, clustering of '
               'the samples, samples', fontsize=9)
  return fig


def _draw_hidden_border(ax, visible):
  """Dashed outline of the hidden region (a line or boxes) on `ax`."""
  visible = np.asarray(visible, np.float64)
  if 0 < visible.min() or visible.max() < 1:
    return  # Nothing hidden or nothing visible: no border to draw.
  ax.contour(visible, levels=[0.5], colors='white', linestyles='--',
             linewidths=0.8)


def make_extrapolation_figure(examples: Sequence[Dict[str, np.ndarray]],
                              num_shown_samples: int = 6
                              ) -> mpl_figure.Figure:
  """Fig. 5: per masked example the image, the masked input, the target,
  the reconstruction, `num_shown_samples` samples and their per-pixel label
  disagreement, each with the border of the hidden region dashed."""
  num_shown = min(num_shown_samples, max(len(e['samples']) for e in examples))
  fig, axes = _new_figure(len(examples), 5 + num_shown)
  for index, (row, example) in enumerate(zip(axes, examples)):
    title = _row_titles(index)
    image, cmap = _display_image(example['image'])
    _show(row[0], image, title('image'), cmap)
    row[0].set_ylabel(f'image {index}', fontsize=7)
    masked, masked_cmap = _display_image(example['masked_image'])
    _show(row[1], masked, title('masked input'), masked_cmap)
    _show(row[2], colourise_labels(example['target']), title('target'))
    _show(row[3], colourise_labels(example['recon']), title('recon.'))
    samples = np.asarray(example['samples'])
    for s in range(min(num_shown, len(samples))):
      _show(row[4 + s], colourise_labels(samples[s]), title(f'sample {s}'))
    _show_std(fig, row[-1], example['diversity'], title('disagreement'),
              DISAGREEMENT_LABEL, vmax=1.0)
    for ax in row[1:]:
      _draw_hidden_border(ax, example['visible'])
  fig.suptitle('Extrapolation: the prior sees the image and labels outside '
               'the dashed border only', fontsize=9)
  return fig


def write_figures(out_dir: str, config, params, model, result,
                  workdir: Optional[str]) -> List[str]:
  """Writes every figure whose inputs exist into `out_dir`.

  Args:
    out_dir: folder for the PNGs (created if needed).
    config: the run's config (`seed`, `loss.objective`, `loss.kappa`).
    params: model parameters (for the per-level sampling figure).
    model: the `hpunet_jax.models.Model`.
    result: an `eval.evaluator.EvalResult`; its `examples` hold the arrays.
    workdir: the training run's folder (for `metrics.jsonl`), or None.

  Returns:
    Paths of the written PNG files.
  """
  os.makedirs(out_dir, exist_ok=True)
  examples = list(result.examples) if result is not None else []
  planned = []  # (file name, () -> Figure or None)
  lesions = [e for e in examples
             if all(k in e for k in ('image', 'graders', 'recon', 'samples'))]
  if lesions:
    planned.append(('samples.png', lambda: make_samples_figure(lesions)))
  instances = [e for e in examples if all(
      k in e for k in ('image', 'target', 'recon', 'clusters', 'samples'))]
  if instances:
    planned.append(('clustering.png',
                    lambda: make_clustering_figure(instances)))
  extrapolations = [e for e in examples if all(
      k in e for k in ('image', 'masked_image', 'visible', 'target', 'recon',
                       'samples', 'diversity'))]
  if extrapolations:
    planned.append(('extrapolation.png',
                    lambda: make_extrapolation_figure(extrapolations)))
  # The model's input: with masking, the masked image and visible labels.
  images = [e.get('model_input', e['image']) for e in examples
            if 'image' in e][:3]
  if images and model is not None and model.num_latent_levels > 1:
    planned.append(('levels.png', lambda: make_levels_figure(
        config, params, model, np.stack(images))))
  records = metric_writers.read_metrics(workdir) if workdir else []
  if records:
    planned.append(('training_curves.png',
                    lambda: training_curves.make_figure(config, records)))
  paths = []
  if not planned:
    return paths
  with progress.Progress('writing figures',
                         total=len(planned), unit='figures') as report:
    for index, (name, make) in enumerate(planned):
      logging.info('writing figure %d/%d: %s ...', index + 1, len(planned),
                   name)
      fig = make()
      if fig is not None:
        paths.append(_save(fig, os.path.join(out_dir, name)))
      report.update()
  return paths
