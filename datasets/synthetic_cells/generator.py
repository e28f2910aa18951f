"""Synthetic cells: a miniature SNEMI3D-like instance segmentation task.

An image is tiled into cells (Voronoi regions of random seed points, relaxed
towards regularity by Lloyd steps and given wavy borders by a smooth random
displacement of the pixel grid). Cells are separated by dark membranes; each
cell has its own brightness and a fine texture, and the whole image is blurred
and noised. Labels are instance ids per pixel: `1..n` per cell, 0 on the
membranes.

`generate_example(spec, seed, split_id, index)` is deterministic in its
arguments.
"""
import dataclasses

import numpy as np
from scipy import ndimage

from datasets import generator_checks


@dataclasses.dataclass(frozen=True)
class CellsSpec:
  """How cell images are generated (filled by the builder configs).

  Attributes:
    image_size: side of the square image in pixels.
    min_cells: fewest Voronoi seeds per image (inclusive).
    max_cells: most Voronoi seeds per image (inclusive).
    lloyd_steps: Lloyd relaxation steps (0 = plain random Voronoi).
    membrane_width: membrane thickness in pixels.
    border_wobble: RMS displacement (pixels) that makes cell borders wavy.
    cell_brightness: (low, high) range of the per-cell mean brightness.
    membrane_brightness: brightness of the membranes.
    texture_std: amplitude of the fine texture inside cells.
    blur_sigma: Gaussian blur of the rendered image (pixels).
    noise_std: standard deviation of the white pixel noise.
  """
  image_size: int = 64
  min_cells: int = 10
  max_cells: int = 20
  lloyd_steps: int = 1
  membrane_width: float = 1.5
  border_wobble: float = 1.5
  cell_brightness: tuple[float, float] = (0.45, 0.8)
  membrane_brightness: float = 0.12
  texture_std: float = 0.06
  blur_sigma: float = 0.7
  noise_std: float = 0.04

  def __post_init__(self):
    generator_checks.check_image_size(self.image_size, 1024)
    generator_checks.check_count_range('cells', self.min_cells, self.max_cells,
                                       1)
    if self.membrane_width <= 0 or self.lloyd_steps < 0:
      raise ValueError('membrane_width must be > 0 and lloyd_steps >= 0, got '
                       f'{self.membrane_width}, {self.lloyd_steps}')


def _nearest_two(points: np.ndarray, rows: np.ndarray, cols: np.ndarray):
  """Index of the nearest seed and the two smallest distances, `[H, W]` each."""
  distances = np.hypot(rows[None] - points[:, 0, None, None],
                       cols[None] - points[:, 1, None, None])  # [n, H, W]
  if len(points) == 1:
    return (np.zeros(rows.shape, np.int64), distances[0],
            np.full(rows.shape, np.inf))
  two = np.partition(distances, 1, axis=0)[:2]
  return np.argmin(distances, axis=0), two[0], two[1]


def _smooth_field(rng: np.random.Generator, size: int, sigma: float):
  field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma,
                                  mode='wrap')
  return field / (field.std() + 1e-12)


def generate_cells(spec: CellsSpec,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Draws one image and its instance map.

  Returns:
    image: uint8 `[H, W, 1]`.
    instances: int32 `[H, W]`, cells numbered `1..n`, membranes 0.
  """
  size = spec.image_size
  num_cells = int(rng.integers(spec.min_cells, spec.max_cells + 1))
  points = rng.uniform(0, size - 1, size=(num_cells, 2))
  grid_rows, grid_cols = np.meshgrid(np.arange(size, dtype=np.float64),
                                     np.arange(size, dtype=np.float64),
                                     indexing='ij')
  for _ in range(spec.lloyd_steps):
    nearest, _, _ = _nearest_two(points, grid_rows, grid_cols)
    for i in range(num_cells):
      members = nearest == i
      if members.any():
        points[i] = grid_rows[members].mean(), grid_cols[members].mean()
  # Wavy borders: measure distances on a smoothly displaced grid.
  rows = grid_rows + spec.border_wobble * _smooth_field(rng, size, size / 12)
  cols = grid_cols + spec.border_wobble * _smooth_field(rng, size, size / 12)
  nearest, first, second = _nearest_two(points, rows, cols)
  # (second - first) / 2 approximates the distance to the nearest border.
  membrane = (second - first) < spec.membrane_width
  # Number the cells that kept pixels 1..n; membranes are 0.
  labels = np.where(membrane, -1, nearest)
  present = np.unique(labels[labels >= 0])
  lookup = np.zeros(num_cells + 1, np.int32)
  lookup[present + 1] = np.arange(1, len(present) + 1)
  instances = lookup[labels + 1]

  brightness = rng.uniform(*spec.cell_brightness, size=num_cells + 1)
  brightness[0] = spec.membrane_brightness
  image = brightness[np.where(membrane, 0, nearest + 1)]
  image = image + spec.texture_std * _smooth_field(rng, size, 0.8) * ~membrane
  image = ndimage.gaussian_filter(image, spec.blur_sigma)
  image += spec.noise_std * rng.standard_normal((size, size))
  image = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)[..., None]
  return image, instances


def generate_example(spec: CellsSpec, seed: int, split_id: int,
                     index: int) -> dict[str, np.ndarray]:
  """One example (`image` uint8 `[H, W, 1]`, `instances` int32 `[H, W]`),
  deterministic in `(seed, split_id, index)`."""
  rng = np.random.default_rng([seed, split_id, index])
  image, instances = generate_cells(spec, rng)
  return {'image': image, 'instances': instances}
