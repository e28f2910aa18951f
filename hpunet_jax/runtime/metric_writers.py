"""Training metrics: a progress line, `metrics.jsonl` and TensorBoard events.

Each logged step produces
* one absl log line: step, loss, reconstruction per pixel, lambda, KL per level,
  steps/s and the estimated time left;
* one JSON object per line in `<workdir>/metrics.jsonl` (`{"step": .., ...}`);
* TensorBoard scalars under `<workdir>/tensorboard` (tensorboardX, no TF).

On a restart from step `s`, records of steps > `s` (written after the last
checkpoint by the interrupted run) are dropped from `metrics.jsonl` and
TensorBoard is told to purge them, so both read as one uninterrupted run.
"""
import json
import os
import re
import time
from typing import Mapping

from absl import logging
import numpy as np

from hpunet_jax.runtime import progress

METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'
# Keys that depend on wall-clock time and so differ between identical runs.
TIMING_KEYS = ('steps_per_sec',)


def read_metrics(workdir: str) -> list:
  """All records of `<workdir>/metrics.jsonl` (list of dicts)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _truncate_metrics(path: str, last_step: int) -> None:
  """Keeps only records with `step <= last_step` (atomic rewrite)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [l for l in f if l.strip() and json.loads(l)['step'] <= last_step]
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.writelines(lines)
  os.replace(tmp, path)


def _kl_levels(scalars: Mapping[str, float]) -> list:
  """Values of `kl_<l>` keys ordered by level (coarsest first)."""
  levels = sorted((int(m.group(1)), v) for k, v in scalars.items()
                  if (m := re.fullmatch(r'kl_(\d+)', k)))
  return [v for _, v in levels]


def format_progress(step: int, total_steps: int, scalars: Mapping[str, float],
                    steps_per_sec: float, show_eta: bool = True) -> str:
  """One human-readable progress line; `show_eta` False while the rate
  still includes compilation."""
  parts = [f'step {step}/{total_steps}']
  for key, label in (('loss', 'loss'), ('rec_mean', 'rec/px'),
                     ('lambda', 'lambda')):
    if key in scalars:
      parts.append(f'{label} {scalars[key]:.4g}')
  kls = _kl_levels(scalars)
  if kls:
    parts.append('KL ' + '/'.join(f'{v:.3g}' for v in kls) +
                 (f' (sum {scalars["kl_sum"]:.4g})' if 'kl_sum' in scalars
                  else ''))
  parts.append(f'{steps_per_sec:.3g} steps/s')
  if steps_per_sec > 0 and show_eta:
    parts.append('ETA ' + progress.format_duration(
        (total_steps - step) / steps_per_sec))
  return ' | '.join(parts)


class MetricWriter:
  """Writes scalars to the log, `metrics.jsonl` and TensorBoard."""

  def __init__(self, workdir: str, *, start_step: int, total_steps: int,
               enabled: bool = True):
    """Opens the writers.

    Args:
      workdir: the run directory.
      start_step: the step training starts (or resumes) from; later records
        of an interrupted run are dropped.
      total_steps: the final step, for the ETA.
      enabled: False on all but the first process: nothing is written.
    """
    self._total_steps = total_steps
    self._enabled = enabled
    self._last_time = time.monotonic()
    self._last_step = start_step
    self._first_step_seconds = None  # Set by `first_step_done`.
    self._jsonl_path = os.path.join(workdir, METRICS_FILE)
    self._tb = None  # A tensorboardX.SummaryWriter on the first process.
    if enabled:
      # Imported here: tensorboardX imports PyTorch when it is installed
      # (1.4 s), which readers of this module (eval.figures) do not need.
      import tensorboardX  # pylint: disable=g-import-not-at-top
      os.makedirs(workdir, exist_ok=True)
      _truncate_metrics(self._jsonl_path, start_step)
      self._tb = tensorboardX.SummaryWriter(
          os.path.join(workdir, TENSORBOARD_DIR),
          purge_step=start_step + 1 if start_step else None)

  def first_step_done(self, step: int) -> None:
    """Logs how long the first step (compilation included) took and starts
    the rate clock after it, so the ETA is the steady-state one."""
    now = time.monotonic()
    self._first_step_seconds = now - self._last_time
    if self._enabled:
      logging.info('Compiled the train step and ran step %d in %.1f s; rates '
                   'and ETAs are measured from here.', step,
                   self._first_step_seconds)
    self._last_time, self._last_step = now, step

  def write(self, step: int, scalars: Mapping[str, float]) -> dict:
    """Logs the scalars of `step` (host numbers) and returns the record."""
    now = time.monotonic()
    steady = step > self._last_step
    if steady:
      steps_per_sec = (step - self._last_step) / max(now - self._last_time,
                                                     1e-9)
    else:  # The compiling step itself: its own (compile-bound) rate.
      steps_per_sec = 1.0 / max(self._first_step_seconds or 0.0, 1e-9)
    self._last_time, self._last_step = now, step
    record = {k: float(np.asarray(v)) for k, v in scalars.items()}
    record['steps_per_sec'] = steps_per_sec
    if not self._enabled:
      return record
    logging.info('%s', format_progress(step, self._total_steps, record,
                                       steps_per_sec, show_eta=steady))
    with open(self._jsonl_path, 'a') as f:
      f.write(json.dumps({'step': step, **record}) + '\n')
    for key, value in record.items():
      self._tb.add_scalar(key, value, step)
    return record

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None
