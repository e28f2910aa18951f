"""The runs of the synthetic study: train-or-load, cached analyses, pooling.

`experiments/study/synthetic.py` is the command line and
`experiments/study/options.py` the options and a run's config; this module
trains and evaluates a run unless it is finished (`train_or_load`), caches a
run's analyses (`cached_run_arrays`) and pools a variant's seeds
(`pool_runs`, `run_task`).
"""
import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import ml_collections
import numpy as np

from datasets import pipeline
from eval import outputs
import hpunet_jax
from experiments.study import analysis as study_analysis
from experiments.study import diagnostics as study_diagnostics
from experiments import convergence
from experiments import train_lib
from experiments.study.options import (TASK_DIRS, StudyOptions,
                                       StudySettingsError, make_config,
                                       seeds_of)
from hpunet_jax.runtime import machine
from hpunet_jax.runtime import run_record

# Keys that may differ between the invocations of one study.
# (`xla_cpu_eigen_conv` picks convolution kernels: float rounding only.)
_CONFIG_KEYS_FREE = ('data_dir', 'compilation_cache_dir', 'xla_cpu_eigen_conv')
# Subtrees that may differ too: `convergence` only judges a finished run, and
# the study judges every run by today's rule (`current_verdict`).
_CONFIG_TREES_FREE = ('convergence',)
TIMING_FILE = 'study_timing.json'


class RunIncompleteError(RuntimeError):
  """A training run stopped (e.g. SIGTERM) before its evaluation."""


def _check_same_config(config: ml_collections.ConfigDict,
                       run_dir: str) -> None:
  """A finished run must have been trained with this config."""
  path = os.path.join(run_dir, 'config.json')
  with open(path) as f:
    saved = json.load(f)
  current = json.loads(config.to_json_best_effort())

  def flat(d, prefix=''):
    for k, v in d.items():
      if isinstance(v, dict):
        if f'{prefix}{k}' not in _CONFIG_TREES_FREE:
          yield from flat(v, f'{prefix}{k}.')
      elif k not in _CONFIG_KEYS_FREE:
        yield f'{prefix}{k}', v

  saved, current = dict(flat(saved)), dict(flat(current))
  differing = sorted(k for k in saved.keys() | current.keys()
                     if saved.get(k) != current.get(k))
  if differing:
    changes = ', '.join(f'{k}: {saved.get(k)} -> {current.get(k)}'
                        for k in differing)
    raise StudySettingsError(f'{path} was trained with other settings '
                             f'({changes}); use another --workdir.')


def load_eval(out_dir: str):
  """`(metrics, per_image)` of an evaluation folder."""
  metrics = outputs.load_metrics(out_dir)
  with np.load(os.path.join(out_dir, outputs.PER_IMAGE_FILE)) as per_image:
    return metrics, {k: per_image[k] for k in per_image.files}


def save_eval(out_dir: str, result) -> None:
  """Writes an `EvalResult`'s metrics.json and per_image.npz to `out_dir`."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, outputs.METRICS_FILE), 'w') as f:
    json.dump(result.metrics, f, indent=2, sort_keys=True)
  np.savez(os.path.join(out_dir, outputs.PER_IMAGE_FILE), **result.per_image)


def is_evaluated(out_dir: str) -> bool:
  """Whether `out_dir` holds both files of an evaluation."""
  return outputs.is_complete(out_dir)


def completeness_problem(config: ml_collections.ConfigDict,
                         run_dir: str) -> Optional[str]:
  """Why the run in `run_dir` is not a finished, evaluated run of `config`
  (None when it is).

  Only the trainer's own record counts as finished (`finished.json`, with
  step and config hash), and the evaluation must name that step and hash:
  an offline evaluation of an intermediate checkpoint (`run_metrics` after
  a kill) is not the run's result.
  """
  wanted_step = config.num_train_steps
  wanted_hash = run_record.config_hash(config)
  finished = run_record.read_finished(run_dir)
  if finished is None:
    return 'its training has not finished'
  if finished.get('step') != wanted_step:
    return (f"it finished at step {finished.get('step')}, the study asks "
            f'for {wanted_step}')
  if finished.get('config_hash') != wanted_hash:
    return (f"it was trained with config hash {finished.get('config_hash')}"
            f', the study asks for {wanted_hash}')
  eval_dir = outputs.final_results_dir(run_dir, config)
  if not is_evaluated(eval_dir):
    return 'it has not been evaluated'
  with open(os.path.join(eval_dir, 'metrics.json')) as f:
    metrics = json.load(f)
  evaluated = (metrics.get('checkpoint_step'), metrics.get('config_hash'),
               metrics.get('num_samples'))
  wanted = (wanted_step, wanted_hash, config.eval.num_samples)
  if evaluated != wanted:
    return (f'{eval_dir}/metrics.json evaluates (step, config hash, '
            f'samples) {evaluated}, the study asks for {wanted}')
  return None


def train_or_load(config: ml_collections.ConfigDict,
                  run_dir: str) -> Dict[str, Any]:
  """Trains and evaluates one run unless it is finished and evaluated
  (`completeness_problem`); loads its results.

  Returns:
    `metrics` (metrics.json), `per_image` (metric -> `[num_images]`),
    `wall_time_s` (training + evaluation, summed over invocations; None
    for a run trained outside the study),
    `trained` (whether this call trained or evaluated), `run_dir` and
    `converged` (finished.json's verdict; None where it has none).
  """
  eval_dir = outputs.final_results_dir(run_dir, config)
  timing_path = os.path.join(run_dir, TIMING_FILE)
  if os.path.exists(os.path.join(run_dir, 'config.json')):
    _check_same_config(config, run_dir)  # Also before resuming a run.
  trained = completeness_problem(config, run_dir) is not None
  if trained:
    timing = {'wall_time_s': 0.0, 'machines': []}
    if os.path.exists(timing_path):
      with open(timing_path) as f:
        timing.update(json.load(f))
    start = time.time()
    try:
      train_lib.train_and_evaluate(config, run_dir)
    finally:
      # Also after an interruption, so a resumed run's time adds up; a run
      # resumed in another session may have trained on another CPU.
      timing['wall_time_s'] += time.time() - start
      timing['machines'].append(machine.machine_info())
      with open(timing_path, 'w') as f:
        json.dump(timing, f)
    problem = completeness_problem(config, run_dir)
    if problem:
      raise RunIncompleteError(f'{run_dir} is not complete ({problem}); '
                               'rerun the same command to continue.')
  converged = current_verdict(config, run_dir)
  metrics, per_image = load_eval(eval_dir)
  # Unknown for a run trained outside the study; machines for a run timed
  # before they were recorded.
  timing = {'wall_time_s': None}
  if os.path.exists(timing_path):
    with open(timing_path) as f:
      timing.update(json.load(f))
  cpus = sorted({machine.cpu_label(m) for m in timing.get('machines', ())})
  return dict(metrics=metrics, per_image=per_image,
              wall_time_s=timing['wall_time_s'], trained=trained,
              run_dir=run_dir, converged=converged, cpus=cpus or None)


def current_verdict(config: ml_collections.ConfigDict,
                    run_dir: str) -> Optional[bool]:
  """Whether the finished run ended converged by the rule that judges
  `config` today (`convergence.rule_of`).

  A run judged by a replaced rule (the ELBO's old plateau of logged
  single-batch losses) is judged again, and its finished.json and final
  metrics.json take the new verdict. None for a run finished before
  convergence was recorded (never counted as converged).
  """
  finished = run_record.read_finished(run_dir) or {}
  recorded = finished.get('convergence')
  if recorded is None or recorded.get('rule') == convergence.rule_of(config):
    return finished.get('converged')
  verdict = train_lib.judge_convergence(config, run_dir).to_dict()
  run_record.write_finished(run_dir, finished['step'], config, verdict)
  eval_dir = outputs.final_results_dir(run_dir, config)
  metrics = outputs.load_metrics(eval_dir)
  metrics.update(converged=verdict['converged'], convergence=verdict)
  path = os.path.join(eval_dir, outputs.METRICS_FILE)
  with open(path + '.tmp', 'w') as f:
    json.dump(metrics, f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)
  return verdict['converged']


def run_dir_of(options: StudyOptions, task: str, variant: str,
               seed: int) -> str:
  return os.path.join(options.workdir, TASK_DIRS[task], variant,
                      f'seed{seed}')


def cached_run_arrays(options: StudyOptions, task: str, variant: str,
                      seed: int, cache_name: str, num_images: int,
                      compute) -> Dict[str, np.ndarray]:
  """An analysis of one finished run of `task`, kept in its folder.

  `compute(run, examples, config)` (`run` from `hpunet_jax.load`,
  `examples` the first `num_images` test images) returns named arrays; they
  are computed once into `<run_dir>/<cache_name>` (.npz) and read from there.
  """
  run_dir = run_dir_of(options, task, variant, seed)
  cache = os.path.join(run_dir, cache_name)
  if not os.path.exists(cache):
    config = make_config(task, variant, seed, options)
    run = hpunet_jax.load(run_dir, config=config)
    examples = list(pipeline.eval_examples(config.data, config.eval.split,
                                           limit=num_images))
    np.savez(cache, **compute(run, examples, config))
  with np.load(cache) as stored:
    return {key: stored[key] for key in stored.files}


def pool_runs(runs: List[Dict[str, Any]], config: ml_collections.ConfigDict,
              options: StudyOptions) -> Dict[str, Any]:
  """One variant's results entry from its seeds' runs."""
  entry = study_analysis.pool_seeds([r['per_image'] for r in runs],
                                    options.num_resamples, rng_seed=0)
  oracles = [r['metrics']['oracle'] for r in runs if 'oracle' in r['metrics']]
  if oracles:
    entry['oracle'] = study_analysis.pool_summaries(oracles)
  # The `_std` keys are the pooled bootstrap (test images and seeds
  # together); the spread of the seeds' own means is kept next to it.
  names = [k for k, v in entry.items()
           if isinstance(v, float) and not k.endswith('_std')]
  entry['seed_means'] = {
      name: [float(r['metrics'][name]) for r in runs if name in r['metrics']]
      for name in names}
  entry['seed_std'] = {  # Sample std (ddof 1); None with one seed.
      name: float(np.std(v, ddof=1)) if len(v) > 1 else None
      for name, v in entry['seed_means'].items()}
  ends = [study_diagnostics.training_end(r['run_dir'])
          for r in runs if 'run_dir' in r]
  if any(ends):  # Lambda, rec per pixel and KL per level at the end.
    entry['training_end'] = study_diagnostics.mean_training_end(ends)
    entry['training_end_per_seed'] = ends
  # One verdict per seed (None: not recorded); pooled numbers above mix
  # converged and unconverged seeds only where this list says so.
  entry['converged'] = [r.get('converged') for r in runs]
  entry.update(
      num_seeds=len(runs), num_train_steps=config.num_train_steps,
      batch_size=config.batch_size,
      num_images=runs[0]['metrics']['num_images'],
      num_samples=runs[0]['metrics']['num_samples'],
      wall_time_s_per_seed=[r['wall_time_s'] for r in runs],
      # The CPUs each seed trained on (None: not recorded).
      cpus_per_seed=[r.get('cpus') for r in runs])
  known = [t for t in entry['wall_time_s_per_seed'] if t is not None]
  # The sum over seeds; None when no seed's time is known.
  entry['wall_time_s'] = float(sum(known)) if known else None
  return entry


def run_task(task: str, variants: Sequence[str],
             options: StudyOptions) -> Dict[str, Any]:
  """Trains/loads every run of `task` and pools each variant's seeds."""
  results = {}
  for variant in variants:
    runs = []
    for seed in range(seeds_of(options, task, variant)):
      config = make_config(task, variant, seed, options)
      run_dir = run_dir_of(options, task, variant, seed)
      print(f'[study] {task}:{variant} seed {seed} in {run_dir}', flush=True)
      runs.append(train_or_load(config, run_dir))
    results[variant] = pool_runs(runs, config, options)
  return results
