"""Where an evaluation's files go, and writing them without losing any.

Every evaluation of a run has its own folder, named by what decides its
numbers:

  <workdir>/eval/<split>/step<S>_samples<N>_images<M>/  (M 'all': whole split)
      metrics.json  per_image.npz  samples.png  levels.png  ...

so `eval.run_metrics` with other settings, or of another checkpoint, never
touches an earlier result. The trainer's final evaluation is the folder of
its last step and its config's `eval` settings (`final_results_dir`).

`images<M>` names the images evaluated: a `num_examples` that covers the
whole split is `imagesall` (`images_named`).

A folder is written under a temporary name and renamed when complete, so a
folder with the final name is always a whole evaluation (an interrupted one
leaves only `.<name>.incomplete-<host>-<pid>`, removed by the next write
once that process is gone). Evaluations with the same settings take turns
(`evaluation_lock`): the second waits, then finds the first's folder.
"""
import json
import os
import shutil
import socket
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from hpunet_jax.runtime import workdir_lock

EVAL_DIR = 'eval'
METRICS_FILE = 'metrics.json'
PER_IMAGE_FILE = 'per_image.npz'


class ResultsExistError(FileExistsError):
  """The evaluation folder exists and overwriting was not asked for."""


# The HPU-Net paper's protocol (config.eval's defaults): no suffix for it.
_DEFAULT_PROTOCOL = {'few_samples': 16, 'hm_iou_convention': 'lcm',
                     'ged_self_pairs': True,
                     'ece_convention': 'sample_fraction'}


def protocol_tag(eval_config) -> str:
  """'' for the paper's protocol, else e.g. `_few50_repeat_gt_noself` or
  `_ece_mose`, so evaluations under other conventions
  (docs/lidc_protocols.md) get folders of their own."""
  get = lambda k: eval_config.get(k, _DEFAULT_PROTOCOL[k])
  tag = ''
  if get('few_samples') != _DEFAULT_PROTOCOL['few_samples']:
    tag += f'_few{int(get("few_samples"))}'
  if get('hm_iou_convention') != _DEFAULT_PROTOCOL['hm_iou_convention']:
    tag += f'_{get("hm_iou_convention")}'
  if not get('ged_self_pairs'):
    tag += '_noself'
  if get('ece_convention') != _DEFAULT_PROTOCOL['ece_convention']:
    tag += f'_ece_{get("ece_convention")}'
  return tag


def settings_name(step: int, num_samples: int,
                  num_examples: Optional[int], protocol: str = '') -> str:
  """`step1000_samples100_images200`; `imagesall` for the whole split;
  `protocol` (from `protocol_tag`) appended."""
  images = 'all' if num_examples is None else str(int(num_examples))
  return f'step{int(step)}_samples{int(num_samples)}_images{images}{protocol}'


def images_named(num_examples: Optional[int],
                 split_size: int) -> Optional[int]:
  """The image count a folder names: None (`imagesall`) when
  `num_examples` is None or covers the split's `split_size` images."""
  if num_examples is not None and int(num_examples) < 1:
    raise ValueError(f'num_examples must be None (the whole split) or >= 1, '
                     f'got {num_examples}.')
  if num_examples is None or int(num_examples) >= split_size:
    return None
  return int(num_examples)


def results_dir(workdir: str, split: str, *, step: int, num_samples: int,
                num_examples: Optional[int], protocol: str = '') -> str:
  """The folder of one evaluation of `workdir`'s checkpoint `step`."""
  return os.path.join(workdir, EVAL_DIR, split,
                      settings_name(step, num_samples, num_examples, protocol))


def evaluated_images(config, split: str) -> Optional[int]:
  """`images_named` for `config.eval.num_examples` on `split` of
  `config.data` (reads the split's size only when a count is set)."""
  num_examples = config.eval.num_examples
  if num_examples is None:
    return None
  from datasets import pipeline  # pylint: disable=g-import-not-at-top
  return images_named(num_examples,
                      pipeline.num_eval_examples(config.data, split))


def final_results_dir(workdir: str, config) -> str:
  """The folder the trainer's final evaluation writes (and the study reads):
  step `config.num_train_steps`, `config.eval`'s split, samples, images."""
  return results_dir(workdir, config.eval.split,
                     step=config.num_train_steps,
                     num_samples=config.eval.num_samples,
                     num_examples=evaluated_images(config, config.eval.split),
                     protocol=protocol_tag(config.eval))


def evaluation_lock(out_dir: str) -> workdir_lock.SettingsLock:
  """The lock evaluations into `out_dir` take turns on (a context manager;
  the lock file sits next to the folder and goes on release)."""
  parent, name = os.path.split(os.path.abspath(out_dir))
  return workdir_lock.SettingsLock(
      os.path.join(parent, f'.{name}.lock'),
      f'an evaluation with the same settings into {out_dir}')


def is_complete(out_dir: str) -> bool:
  """Whether `out_dir` holds a whole evaluation."""
  return all(os.path.exists(os.path.join(out_dir, name))
             for name in (METRICS_FILE, PER_IMAGE_FILE))


def check_writable(out_dir: str, overwrite: bool) -> None:
  """Raises ResultsExistError (before any work) unless `out_dir` is new or
  `overwrite` is set."""
  if os.path.exists(out_dir) and not overwrite:
    raise ResultsExistError(
        f'{out_dir} already holds an evaluation with these settings; pass '
        '--overwrite to replace it, or other --num_samples / --num_examples '
        '/ --split / protocol flags to keep it.')


def load_metrics(out_dir: str) -> Dict[str, Any]:
  with open(os.path.join(out_dir, METRICS_FILE)) as f:
    return json.load(f)


def _writer_alive(suffix: str) -> bool:
  """Whether the writer named by a temporary folder's `<host>-<pid>`
  suffix (or `<pid>`, this host) may still be writing it."""
  host, _, pid = suffix.rpartition('-')
  try:
    return workdir_lock.process_alive(host or None, int(pid))
  except ValueError:  # Not a name this module writes: leave it.
    return True


def write_results(out_dir: str, metrics: Dict[str, Any],
                  per_image: Dict[str, np.ndarray],
                  write_figures: Callable[[str], List[str]],
                  overwrite: bool) -> List[str]:
  """Writes metrics.json, per_image.npz and the figures, then publishes them.

  Args:
    out_dir: the final folder (see `results_dir`).
    metrics: the summary (JSON-serialisable).
    per_image: metric -> float64 `[num_images]`.
    write_figures: called with the temporary folder; returns the PNG paths
      it wrote there.
    overwrite: replace an existing `out_dir`.

  Returns:
    Paths of the figures, under `out_dir`.
  """
  check_writable(out_dir, overwrite)
  parent, name = os.path.split(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  prefix = f'.{name}.incomplete-'
  for leftover in os.listdir(parent):  # Of an interrupted evaluation.
    if leftover.startswith(prefix) and not _writer_alive(
        leftover[len(prefix):]):
      shutil.rmtree(os.path.join(parent, leftover), ignore_errors=True)
  tmp_dir = os.path.join(parent,
                         f'{prefix}{socket.gethostname()}-{os.getpid()}')
  shutil.rmtree(tmp_dir, ignore_errors=True)  # A dead process of our pid's.
  os.makedirs(tmp_dir)
  try:
    with open(os.path.join(tmp_dir, METRICS_FILE), 'w') as f:
      json.dump(metrics, f, indent=2, sort_keys=True)
    # Per-image values, so runs of several seeds can be pooled with
    # `eval.bootstrap.pooled_bootstrap` (paper Table 1).
    np.savez(os.path.join(tmp_dir, PER_IMAGE_FILE), **per_image)
    figure_names = [os.path.basename(p) for p in write_figures(tmp_dir)]
    if os.path.exists(out_dir):  # overwrite is set (checked above).
      shutil.rmtree(out_dir)
    os.rename(tmp_dir, out_dir)
  except BaseException:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    raise
  return [os.path.join(out_dir, n) for n in figure_names]
