"""One evaluation of one checkpoint: the `Evaluator`'s run, its table, its
folder.

Shared by the trainer's final evaluation, `eval.run_metrics` and the study.
`evaluate` prints the summary table (`format_table`) and, given the run's
workdir, writes metrics.json, per_image.npz and the figures into the
evaluation's own folder (`eval.outputs`), with where the parameters came
from (`checkpoint_step`, `config_hash`) and whether the training run ended
converged (`converged`, `convergence`: the trainer's finished.json, for the
checkpoint of the run's last step; None for any other checkpoint).
"""
import math
import os
from typing import Any, Dict, Optional

from absl import logging

from eval import evaluator
from eval import outputs
from hpunet_jax.runtime import run_record


def format_table(summary: Dict[str, Any], line_width: int = 120) -> str:
  """A readable table: one row for the model, one for the oracle; metrics
  that do not fit `line_width` characters continue in further blocks."""
  rows = [('model', summary)]
  if 'oracle' in summary:
    rows.append(('oracle', summary['oracle']))
  # The model's metrics, then the oracle's that the model lacks (undefined
  # on every image, e.g. a coherence where no sample has two lesions).
  names = []
  for _, values in rows:
    names += [k for k in values if not k.endswith('_std') and k not in names
              and isinstance(values[k], float)]
  # At least one space between columns, however long the metric names.
  width = max([18] + [len(n) + 1 for n in names])
  per_block = max(1, (line_width - 8) // width)
  blocks = []
  for start in range(0, max(len(names), 1), per_block):
    block = names[start:start + per_block]
    lines = [f"{'':8s}" + ''.join(f'{n:>{width}s}' for n in block)]
    for label, values in rows:
      cells = []
      for n in block:
        if n in values and not math.isnan(values[n]):
          cells.append(f"{values[n]:9.4f} ±{values.get(n + '_std', 0):7.4f}")
        else:
          cells.append('-')
      lines.append(f'{label:8s}' + ''.join(f'{c:>{width}s}' for c in cells))
    blocks.append('\n'.join(lines))
  return '\n\n'.join(blocks)


def evaluate(config, params, model, split: str, num_samples: int,
             workdir: Optional[str] = None, *, step: Optional[int] = None,
             existing: str = 'error') -> Dict[str, Any]:
  """Runs the evaluator, prints the table and, with a `workdir`, writes
  metrics.json, per_image.npz and the figures into
  `outputs.results_dir(workdir, split, step=step, ...)` (evaluations with
  the same settings take turns: `outputs.evaluation_lock`).

  Args:
    config: the run's config (`config.eval` as in `Evaluator`).
    params: the model parameters.
    model: the `hpunet_jax.models.Model`.
    split: split to evaluate.
    num_samples: largest sample count per image.
    workdir: the training run's folder; None = print only.
    step: the checkpoint step evaluated (names the folder; needed with a
      workdir).
    existing: what to do when the folder exists: 'error' (raise
      `outputs.ResultsExistError` before any work), 'overwrite', or 'keep'
      (log it and return the stored metrics without evaluating).

  metrics.json also records where the parameters came from:
  `checkpoint_step` (the given step) and `config_hash`
  (`run_record.config_hash` of `config`).

  Returns:
    The summary dict (the content of metrics.json).
  """
  if existing not in ('error', 'overwrite', 'keep'):
    raise ValueError(f"existing must be 'error', 'overwrite' or 'keep', got "
                     f'{existing!r}.')
  evaluator.check_counts(num_samples, config.eval.num_examples)
  if not workdir:
    return _evaluate(config, params, model, split, num_samples, None, step,
                     existing, None)
  if step is None:
    raise ValueError('evaluate: pass the checkpoint `step` with a workdir.')
  out_dir = outputs.results_dir(
      workdir, split, step=step, num_samples=num_samples,
      num_examples=outputs.evaluated_images(config, split),
      protocol=outputs.protocol_tag(config.eval))
  # Another evaluation with these settings: wait for it, then find its folder.
  with outputs.evaluation_lock(out_dir):
    return _evaluate(config, params, model, split, num_samples, workdir,
                     step, existing, out_dir)


def _evaluate(config, params, model, split: str, num_samples: int,
              workdir: Optional[str], step: Optional[int], existing: str,
              out_dir: Optional[str]) -> Dict[str, Any]:
  """`evaluate` into `out_dir` (None = print only)."""
  if out_dir:
    if existing == 'keep' and outputs.is_complete(out_dir):
      logging.info('Step %d is already evaluated with these settings in %s '
                   '(delete the folder to evaluate again).', step, out_dir)
      return outputs.load_metrics(out_dir)
    outputs.check_writable(out_dir, overwrite=existing != 'error')
  result = evaluator.Evaluator(config, model).run(params, split, num_samples,
                                        rng_seed=config.seed)
  print(f'{config.data.name}:{split}, {result.metrics["num_images"]} images, '
        f'{num_samples} samples per image (mean ± bootstrap std):')
  print(format_table(result.metrics))
  result.metrics.update(checkpoint_step=step,
                        config_hash=run_record.config_hash(config),
                        **training_convergence(workdir, step))
  if result.metrics['convergence'] is not None:
    print(convergence_line(result.metrics['convergence']))
  if out_dir:
    from eval import figures  # pylint: disable=g-import-not-at-top
    paths = outputs.write_results(
        out_dir, result.metrics, result.per_image,
        lambda folder: figures.write_figures(folder, config, params, model,
                                             result, workdir),
        overwrite=existing != 'error')
    names = ', '.join(os.path.basename(p) for p in paths) or 'none'
    print(f'Wrote {out_dir}/: metrics.json, per_image.npz and figures '
          f'{names}.', flush=True)
  return result.metrics


def training_convergence(workdir: Optional[str],
                         step: Optional[int]) -> Dict[str, Any]:
  """`converged` and `convergence` of the run whose checkpoint `step` is
  evaluated: the finished record's when `step` is the run's last step,
  else None (an intermediate checkpoint, or a run not finished)."""
  finished = run_record.read_finished(workdir) if workdir else None
  if not finished or finished.get('step') != step:
    return {'converged': None, 'convergence': None}
  return {'converged': finished.get('converged'),
          'convergence': finished.get('convergence')}


def convergence_line(convergence: Dict[str, Any]) -> str:
  """One line for the summary: how training ended."""
  state = 'converged' if convergence['converged'] else 'NOT converged'
  spikes = convergence.get('values', {}).get('spikes')
  return (f'Training ended {state} ({convergence["rule"]}: '
          f'{convergence["reason"]}'
          + (f'; {spikes} reconstruction-loss spikes' if spikes is not None
             else '') + ').')
