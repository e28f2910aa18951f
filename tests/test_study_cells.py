"""Tests of the cells purity analysis (`experiments/study/cells.py`)."""
import numpy as np
import pytest

from experiments.study import cells as study_cells
from experiments.study import options as study_options


def _two_cells():
  """8x8: cell 1 the left half, cell 2 the right half (grid 2: 4x4
  squares, so both cells cross the row border of the squares)."""
  instances = np.zeros((8, 8), np.int32)
  instances[:, :4] = 1
  instances[:, 4:] = 2
  return instances


def test_latent_squares_split_the_image_evenly():
  squares = study_cells.latent_squares((4, 6), grid=2)
  np.testing.assert_array_equal(squares, [[0, 0, 0, 1, 1, 1],
                                          [0, 0, 0, 1, 1, 1],
                                          [2, 2, 2, 3, 3, 3],
                                          [2, 2, 2, 3, 3, 3]])


def test_one_label_per_cell_is_pure():
  instances = _two_cells()
  labels = np.stack([np.where(instances == 1, 3, 7),
                     np.where(instances == 1, 5, 5)])  # [S=2, H, W]
  out = study_cells.cell_purity(labels, instances, grid=2, erosion=0)
  assert out['purity'] == 1.0
  assert out['purity_crossing'] == 1.0
  assert np.isnan(out['purity_inside'])  # Both cells cross.
  assert out['frac_crossing'] == 1.0


def test_purity_by_hand():
  instances = _two_cells()
  first = np.where(instances == 1, 3, 7)
  second = first.copy()
  second[4:, :4] = 4  # Cell 1: its bottom half takes another label.
  second[0, 4:] = 1   # Cell 2: 4 of its 32 pixels differ.
  labels = np.stack([first, second])
  out = study_cells.cell_purity(labels, instances, grid=2, erosion=0)
  # Cell 1: samples 1.0 and 0.5; cell 2: 1.0 and 28/32.
  np.testing.assert_allclose(out['purity'],
                             ((1.0 + 0.5) / 2 + (1.0 + 28 / 32) / 2) / 2)


def test_inside_and_crossing_cells_are_split():
  instances = np.zeros((8, 8), np.int32)
  instances[:4, :4] = 1  # Exactly the top-left square of the 2x2 grid.
  instances[4:, :] = 2   # The bottom row of squares: crosses.
  labels = np.where(instances == 1, 1, 2)[None]
  labels = np.concatenate([labels, labels])
  labels[1, 4:, 4:] = 3  # Cell 2 follows the squares in sample 1.
  out = study_cells.cell_purity(labels, instances, grid=2, erosion=0)
  assert out['purity_inside'] == 1.0
  np.testing.assert_allclose(out['purity_crossing'], (1.0 + 0.5) / 2)
  assert out['frac_crossing'] == 0.5


def test_erosion_drops_the_border_and_thin_cells():
  instances = np.zeros((9, 9), np.int32)
  instances[:, :6] = 1   # 6 columns wide: an interior remains.
  instances[:, 7] = 2    # One pixel wide: nothing left after erosion.
  labels = np.where(instances == 1, 1, 0)[None].copy()
  labels[0, :, 0] = 5    # Cell 1's border column (touches the image edge).
  labels[0, :, 5] = 5    # Its border column next to the membrane.
  eroded = study_cells.cell_purity(labels, instances, grid=1, erosion=1)
  assert eroded['purity'] == 1.0  # Only the interior counts.
  raw = study_cells.cell_purity(labels, instances, grid=1, erosion=0)
  # Cell 1: 4/6 of its pixels keep label 1; cell 2: one label.
  np.testing.assert_allclose(raw['purity'], (4 / 6 + 1.0) / 2)


def test_no_cells_gives_nan():
  out = study_cells.cell_purity(np.zeros((2, 4, 4), np.int64),
                                np.zeros((4, 4), np.int32), grid=2, erosion=0)
  assert all(np.isnan(v) for v in out.values())


def test_negative_erosion_is_refused():
  with pytest.raises(study_options.StudySettingsError, match='purity_erosion'):
    study_options.StudyOptions(workdir='/tmp/x', purity_erosion=-1).resolved()


def test_touching_cells_with_one_label_by_hand():
  instances = _two_cells()
  labels = np.stack([np.where(instances > 0, 3, 0),          # Same label.
                     np.where(instances == 1, 3, 7),         # Different.
                     np.where(instances > 0, 5, 0)])         # Same.
  out = study_cells.cell_purity(labels, instances, grid=2, erosion=0)
  np.testing.assert_allclose(out['neighbours_same_label'], 2 / 3)
  assert out['neighbours_always_same'] == 0.0
  same = study_cells.cell_purity(labels[[0, 2]], instances, grid=2,
                                 erosion=0)
  assert same['neighbours_always_same'] == 1.0


def test_cells_far_apart_do_not_touch():
  instances = np.zeros((8, 16), np.int32)
  instances[:, :3] = 1
  instances[:, 10:] = 2  # 7 membrane columns between them > TOUCH_PIXELS.
  labels = np.ones((2, 8, 16), np.int64)
  out = study_cells.cell_purity(labels, instances, grid=2, erosion=0)
  assert np.isnan(out['neighbours_same_label'])
  assert np.isnan(out['neighbours_always_same'])
  assert out['purity'] == 1.0
