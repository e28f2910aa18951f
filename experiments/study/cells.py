"""The synthetic study's cells section: do samples give each cell one label?

The Rand error after clustering (paper Appx. H) needs every sample to give a
cell one label: the greedy Hamming clustering of 16 samples cuts a cell
wherever its pixels' labels disagree in some sample. `cell_purity` measures
that per sample: over the interior of each true cell (eroded by `erosion`
pixels, away from the membranes, whose pixels are ambiguous), the fraction
of pixels that carry the cell's majority label. The cells are split into
those whose interior lies inside one square of the HPU-Net's finest latent
grid and those that cross a square's border: a model whose labels follow the
latent grid (a mosaic of squares) is pure inside a square and not across.
The other failure is a merge: two touching cells that get the same label in
every sample are one instance to the clustering. `neighbours_same_label` is
the fraction of samples in which two touching cells' majority labels agree
(1 / num_labels for labels drawn at random), `neighbours_always_same` the
fraction of touching pairs that agree in every sample.

Shape glossary: `S` samples, `B` images, `H, W` image size.
"""
from typing import Any, Dict, Mapping, Sequence

import numpy as np
import scipy.ndimage

from experiments.study import analysis as study_analysis
from experiments.study import options as study_options
from experiments.study import runs as study_runs
from experiments.study.options import CELLS, StudyOptions

PURITY_KEYS = ('purity', 'purity_inside', 'purity_crossing', 'frac_crossing',
               'neighbours_same_label', 'neighbours_always_same')
# Two cells touch if one, grown by this many pixels, overlaps the other (the
# membranes between cells are 1-3 pixels wide).
TOUCH_PIXELS = 3


def latent_squares(shape: Sequence[int], grid: int) -> np.ndarray:
  """int `[H, W]`: which square of a `grid x grid` latent grid each pixel
  lies in (row-major), the squares of an H x W image split evenly."""
  height, width = shape
  rows = np.arange(height) * grid // height
  cols = np.arange(width) * grid // width
  return rows[:, None] * grid + cols[None, :]


def cell_purity(labels: np.ndarray, instances: np.ndarray, grid: int,
                erosion: int) -> Dict[str, float]:
  """Label purity of the true cells in samples.

  Args:
    labels: int `[S, H, W]`, the samples' labels (argmax).
    instances: int `[H, W]`, true cell ids (0 = membrane).
    grid: the finest latent grid's side (e.g. 4 for 4x4).
    erosion: pixels eroded from each cell before measuring (0 = none).

  Returns:
    `purity`: mean over cells and samples of the fraction of a cell's
    interior pixels with its majority label in that sample;
    `purity_inside` / `purity_crossing`: the same over the cells whose
    interior lies in one latent square / crosses a square's border (nan
    where there are none); `frac_crossing`: the fraction of crossing cells;
    `neighbours_same_label`: over pairs of touching cells (`TOUCH_PIXELS`),
    the fraction of samples in which their majority labels agree;
    `neighbours_always_same`: the fraction of pairs that agree in all
    samples (nan without pairs). Cells with no interior left after the
    erosion are left out (all nan if none is left).
  """
  squares = latent_squares(instances.shape, grid)
  purities, crossing, majorities, grown, kept = [], [], [], [], []
  for cell in np.unique(instances[instances > 0]):
    interior = instances == cell
    if erosion:
      interior = scipy.ndimage.binary_erosion(interior, iterations=erosion)
    if not interior.any():
      continue
    counts = [np.bincount(row) for row in labels[:, interior]]  # S x [K]
    purities.append(float(np.mean([c.max() for c in counts]) /
                          interior.sum()))
    crossing.append(len(np.unique(squares[interior])) > 1)
    majorities.append(np.array([c.argmax() for c in counts]))  # [S]
    grown.append(scipy.ndimage.binary_dilation(instances == cell,
                                               iterations=TOUCH_PIXELS))
    kept.append(cell)
  # [pairs, S]: whether two touching cells' majority labels agree.
  same = np.array([majorities[i] == majorities[j]
                   for i in range(len(kept)) for j in range(i + 1, len(kept))
                   if (grown[i] & (instances == kept[j])).any()], bool)
  purities, crossing = np.asarray(purities), np.asarray(crossing, bool)
  mean = lambda values: float(values.mean()) if values.size else float('nan')
  return {'purity': mean(purities),
          'purity_inside': mean(purities[~crossing]),
          'purity_crossing': mean(purities[crossing]),
          'frac_crossing': mean(crossing.astype(np.float64)),
          'neighbours_same_label': mean(same.astype(np.float64)),
          'neighbours_always_same': mean(same.all(axis=1).astype(np.float64))
          if same.size else float('nan')}


def purity_per_image(model, params, examples: Sequence[Mapping[str, Any]],
                     *, num_samples: int, batch_size: int, seed: int,
                     grid: int, erosion: int) -> Dict[str, np.ndarray]:
  """`PURITY_KEYS` -> float64 `[num_images]` (`cell_purity` of each image's
  prior samples; `examples` are cells eval examples with `instances`)."""
  out = {name: [] for name in PURITY_KEYS}
  for batch, labels in study_analysis.prior_labels_by_batch(
      model, params, examples, num_samples=num_samples,
      batch_size=batch_size, seed=seed):  # labels [S, B, H, W]
    for i, example in enumerate(batch):
      values = cell_purity(labels[:, i], np.asarray(example['instances']),
                           grid, erosion)
      for name in PURITY_KEYS:
        out[name].append(values[name])
  return {name: np.asarray(v, np.float64) for name, v in out.items()}


def finest_latent_grid(options: StudyOptions) -> int:
  """Side of the cells HPU-Net's finest latent grid (the bottom is 1x1 and
  each latent level doubles it): the squares `cell_purity` splits by, for
  every variant alike."""
  config = study_options.make_config(CELLS, 'hpunet', 0, options)
  return 2 ** (len(config.model.latent_dims) - 1)


def purity_section(options: StudyOptions) -> Dict[str, Any]:
  """`cell_purity` of every cells variant, pooled over its seeds (the first
  `options.purity_images` test images, the evaluation's sample count)."""
  grid, erosion = finest_latent_grid(options), options.purity_erosion
  out = {}
  for variant in options.cell_variants:
    per_seed = []
    for seed in range(study_options.seeds_of(options, CELLS, variant)):
      config = study_options.make_config(CELLS, variant, seed, options)
      num_samples = config.eval.num_samples
      per_seed.append(study_runs.cached_run_arrays(
          options, CELLS, variant, seed,
          f'purity_{options.purity_images}x{num_samples}_g{grid}_e{erosion}'
          f'_t{TOUCH_PIXELS}.npz', options.purity_images,
          lambda run, examples, config, seed=seed, n=num_samples:
          purity_per_image(run.model, run.params, examples, num_samples=n,
                           batch_size=config.eval.batch_size, seed=seed,
                           grid=grid, erosion=erosion)))
    out[variant] = study_analysis.pool_seeds(per_seed, options.num_resamples,
                                             rng_seed=0)
  out.update(num_images=options.purity_images, grid=grid, erosion=erosion,
             note='purity: fraction of a true cell\'s interior with its '
                  'majority label in a prior sample; inside / crossing: '
                  f'cells within one square of the {grid}x{grid} latent '
                  'grid / across squares.')
  return out


def format_purity(section: Mapping[str, Any],
                  variants: Sequence[str]) -> str:
  """The section as a table, one row per variant."""
  return study_analysis.format_table({v: section[v] for v in variants},
                                     PURITY_KEYS)
