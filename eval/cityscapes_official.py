"""Drives the official Cityscapes instance evaluator for the car class.

`evaluate_ap` calls the functions of cityscapesscripts'
`evalInstanceLevelSemanticLabeling` on ground-truth and prediction folders
written by `eval.cityscapes_eval` (formats documented there).

Work-arounds for cityscapesscripts 2.3.0, results unchanged: (1) it calls
`np.in1d`, removed in NumPy 2.4; while it runs its module sees a NumPy whose
`in1d` is `np.isin(...).ravel()` (upstream PR mcordts/cityscapesScripts#196).
(2) `evaluateMatches` raises IndexError when, at an overlap, there are cars
and predictions but no match and every prediction is excused (upstream issue
#89); AP there is 0, as its own branch for cars without predictions gives.
We call its functions, not `evaluateImgLists` (writes `matches.json` into the
working directory and a cache beside its source) or `getPrediction` (reads
environment variables).
"""
import contextlib
import io
import os
import pathlib
import types
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as cs_eval
from cityscapesscripts.evaluation import instances2dict as cs_instances

CAR_LABEL_ID = 26
CAR_LABEL_NAME = 'car'
VOID_LABEL_ID = 0  # 'unlabeled', ignoreInEval.
IGNORE_TRAIN_ID = 255
NUM_TRAIN_IDS = 19
MAX_INSTANCES = 999  # 26 * 1000 + k must keep label 26.
GT_SUFFIX = '_gtFine_instanceIds.png'
# Official evaluation: overlaps 0.50, 0.55, ..., 0.95 (the evaluator's own
# `np.arange`) and a minimum ground truth region of 100 pixels.
OFFICIAL_OVERLAPS = tuple(float(t) for t in np.arange(0.5, 1.0, 0.05))
OFFICIAL_MIN_REGION_SIZE = 100


class CityscapesEvalError(ValueError):
  """Bad input to, or a refusal by, the official Cityscapes evaluator."""


# Train id -> label id (official table), ignore and unused ids -> void.

def _pair_files(gt_dir, pred_dir) -> Tuple[List[str], List[str]]:
  gt_files = sorted(pathlib.Path(gt_dir).rglob('*' + GT_SUFFIX))
  if not gt_files:
    raise CityscapesEvalError(f'{gt_dir}: no *{GT_SUFFIX} files')
  predictions = {}
  for path in pathlib.Path(pred_dir).rglob('*.txt'):
    if path.stem in predictions:
      raise CityscapesEvalError(f'{pred_dir}: two predictions for {path.stem}: '
                                f'{predictions[path.stem]} and {path}')
    predictions[path.stem] = path
  gt_keys = [p.name[:-len(GT_SUFFIX)] for p in gt_files]
  missing = [str(p) for p, k in zip(gt_files, gt_keys) if k not in predictions]
  extra = sorted(set(predictions) - set(gt_keys))
  if missing or extra or len(set(gt_keys)) != len(gt_keys):
    raise CityscapesEvalError(
        f'{gt_dir} / {pred_dir}: ground truth without prediction {missing}, '
        f'predictions without ground truth {extra}, or a key twice')
  return ([os.path.abspath(p) for p in gt_files],
          [os.path.abspath(predictions[k]) for k in gt_keys])


class _NumpyWithIn1d(types.ModuleType):
  """NumPy as seen by cityscapesscripts, with the removed `in1d` restored."""

  def __init__(self):
    super().__init__('numpy')

  def __getattr__(self, name):
    return getattr(np, name)

  @staticmethod
  def in1d(values, test_values):
    return np.isin(values, test_values).ravel()


@contextlib.contextmanager
def _official_evaluator():
  """Silences its prints, turns its `sys.exit` into an error, adds `in1d`."""
  patched = not hasattr(cs_eval.np, 'in1d')
  if patched:
    cs_eval.np = _NumpyWithIn1d()
  log = io.StringIO()
  try:
    with contextlib.redirect_stdout(log):
      yield
  except SystemExit as e:
    raise CityscapesEvalError(
        f'cityscapesscripts refused: {log.getvalue().strip()}') from e
  finally:
    if patched:
      cs_eval.np = np


def evaluate_ap(gt_dir, pred_dir,
                min_region_size: int = OFFICIAL_MIN_REGION_SIZE,
                overlaps: Optional[Sequence[float]] = None
                ) -> Dict[str, float]:
  """Car AP and AP50 from written ground truth and predictions.

  Reads nothing outside `gt_dir` and `pred_dir` (no environment variables)
  and writes nothing.

  Args:
    gt_dir: holds `**/<key>_gtFine_instanceIds.png` (`write_ground_truth`).
    pred_dir: holds `**/<key>.txt` and their masks (`write_prediction`).
    min_region_size: ground truth cars smaller than this (pixels) are ignored.
    overlaps: IoU thresholds (a match needs IoU > threshold) including 0.5;
      None = the official 0.50:0.05:0.95.

  Returns:
    `{'ap': mean AP over the overlaps, 'ap50': AP at 0.5}` for 'car' as the
    evaluator reports them: nan without ground truth cars of at least
    `min_region_size` pixels, 0 with cars but no predictions.
  """
  overlaps = np.asarray(OFFICIAL_OVERLAPS if overlaps is None else overlaps,
                        np.float64)
  if (overlaps.ndim != 1 or not np.isclose(overlaps, 0.5).any()
      or overlaps.min() < 0.5 or overlaps.max() >= 1.0):
    raise CityscapesEvalError(f'overlaps must lie in [0.5, 1) and include '
                              f'0.5, got {overlaps.tolist()}')
  if min_region_size < 0:
    raise CityscapesEvalError(f'min_region_size must be >= 0, got '
                              f'{min_region_size}')
  gt_files, pred_files = _pair_files(gt_dir, pred_dir)
  # The evaluator's `args` fields that the functions below read; distances
  # are unavailable (no disparity), so only the first region size is used.
  args = types.SimpleNamespace(
      predictionPath=os.path.abspath(pred_dir), instLabels=[CAR_LABEL_NAME],
      overlaps=overlaps, minRegionSizes=np.array([min_region_size]),
      distanceThs=np.array([np.inf]), distanceConfs=np.array([-np.inf]),
      distanceAvailable=False, quiet=True, JSONOutput=False, csv=False,
      colorized=False)
  aps = np.zeros((1, 1, len(overlaps)))
  with _official_evaluator():
    gt_instances = cs_instances.instances2dict(gt_files, False)
    matches = cs_eval.matchGtWithPreds(pred_files, gt_files, gt_instances,
                                       args)
    for i, overlap in enumerate(overlaps):
      one = types.SimpleNamespace(**{**vars(args), 'overlaps': [overlap]})
      try:
        aps[:, :, i] = cs_eval.evaluateMatches(matches, one)[:, :, 0]
      except IndexError:  # Issue #89: cars, no match, all predictions excused.
        aps[:, :, i] = 0.0
    with warnings.catch_warnings():  # All-nan means: no cars, documented.
      warnings.filterwarnings('ignore', 'Mean of empty slice', RuntimeWarning)
      averages = cs_eval.computeAverages(aps, args)
  averages = averages['classes'][CAR_LABEL_NAME]
  return {'ap': float(averages['ap']), 'ap50': float(averages['ap50%'])}
