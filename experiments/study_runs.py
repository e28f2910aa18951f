"""The runs of the synthetic study: options, configs, train-or-load, pooling.

`experiments/study_synthetic.py` is the command line; this module holds what
one run and one variant need: the study's options (`StudyOptions`), the task
config of a run with the study's overrides (`make_config`), training and
evaluating a run unless it is finished (`train_or_load`) and pooling a
variant's seeds (`pool_runs`).

Seeds: the main variants (`hpunet`, `spunet`, and every synthetic-cells
variant) train seeds `0..seeds-1`; the lesion ablations (`ABLATION_VARIANTS`)
train `0..ablation_seeds-1` (`seeds_of`). A finished run is reused whatever
the counts, so raising a count later only trains the new seeds.
"""
import dataclasses
import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import ml_collections
import numpy as np

from datasets import pipeline
from datasets.synthetic_lesions import generator_v2
from datasets.synthetic_lesions import synthetic_lesions_dataset_builder
from eval import outputs
from eval import restore
from experiments import study_analysis
from experiments import study_diagnostics
from experiments import synthetic_cells
from experiments import synthetic_lesions
from experiments import train_lib
from hpunet_jax.runtime import run_record

LESIONS, CELLS = 'synthetic_lesions', 'synthetic_cells'
TASK_MODULES = {LESIONS: synthetic_lesions, CELLS: synthetic_cells}
TASK_DIRS = {LESIONS: 'lesions', CELLS: 'cells'}
# The variants issue 6 compares (the config files may offer more).
STUDY_LESION_VARIANTS = ('hpunet', 'spunet', 'global_latents',
                         'local_latents', 'no_topk')
STUDY_CELL_VARIANTS = ('hpunet', 'spunet')
# Lesion variants whose seed count is `--ablation_seeds` (Table 2's ablations).
ABLATION_VARIANTS = ('global_latents', 'local_latents', 'no_topk')
# Settings that `--tiny` replaces (None = the config's own value).
# `many_lesions`: v2, 5-6 lesions (the training set `default` has 2-4).
FULL_SETTINGS = dict(steps=None, num_eval_images=None, num_samples=None,
                     per_level_images=100, per_level_samples=32,
                     posterior_images=100, posterior_samples=4,
                     generalisation_config='many_lesions')
TINY_SETTINGS = dict(steps=3, num_eval_images=2, num_samples=4,
                     per_level_images=2, per_level_samples=4,
                     posterior_images=2, posterior_samples=2,
                     generalisation_config='tiny')
# Keys that may differ between the invocations of one study.
# (`xla_cpu_eigen_conv` picks convolution kernels: float rounding only.)
_CONFIG_KEYS_FREE = ('data_dir', 'compilation_cache_dir', 'xla_cpu_eigen_conv')
TIMING_FILE = 'study_timing.json'


class RunIncompleteError(RuntimeError):
  """A training run stopped (e.g. SIGTERM) before its evaluation."""


class StudySettingsError(ValueError):
  """The study's options are invalid or contradict a finished run."""


@dataclasses.dataclass
class StudyOptions:
  """What the study runs; None fields take `FULL_SETTINGS` / `TINY_SETTINGS`.

  Attributes:
    workdir: folder of all runs.
    results_dir: where the JSON files and figures go.
    seeds: trained seeds (0..seeds-1) of `hpunet`, `spunet` and the cells
      variants.
    ablation_seeds: trained seeds of each lesion ablation
      (`ABLATION_VARIANTS`); None = `seeds`.
    lesion_variants: variants of `synthetic_lesions.py`.
    cell_variants: variants of `synthetic_cells.py` (empty = skip cells).
    tiny: the `tiny` configs and settings.
    steps: `num_train_steps` (learning-rate drops scaled along).
    num_eval_images: test images evaluated per run.
    num_samples: samples per image in the evaluation.
    per_level_images: test images of the per-level analysis.
    per_level_samples: samples per image and level setting.
    presence_threshold: covered fraction of a lesion's core that counts as
      present.
    posterior_images: test images of the posterior analysis
      (`study_posterior`).
    posterior_samples: posterior samples per image and grader there.
    generalisation_config: lesions builder config of the generalisation
      evaluation (same data version as the training set); '' skips it.
    data_dir: TFDS data directory (None = TFDS's default).
    num_resamples: bootstrap resamples per seed.
    command: the command line, recorded in the results.
  """
  workdir: str
  results_dir: str = 'results'
  seeds: int = 3
  ablation_seeds: Optional[int] = None
  lesion_variants: Sequence[str] = STUDY_LESION_VARIANTS
  cell_variants: Sequence[str] = STUDY_CELL_VARIANTS
  tiny: bool = False
  steps: Optional[int] = None
  num_eval_images: Optional[int] = None
  num_samples: Optional[int] = None
  per_level_images: Optional[int] = None
  per_level_samples: Optional[int] = None
  posterior_images: Optional[int] = None
  posterior_samples: Optional[int] = None
  presence_threshold: float = 0.5
  generalisation_config: Optional[str] = None
  data_dir: Optional[str] = None
  num_resamples: int = 1000
  command: str = ''

  def resolved(self) -> 'StudyOptions':
    """A copy with the None settings filled for full or tiny mode."""
    defaults = TINY_SETTINGS if self.tiny else FULL_SETTINGS
    filled = {k: v for k, v in defaults.items()
              if getattr(self, k) is None}
    if self.ablation_seeds is None:
      filled['ablation_seeds'] = self.seeds
    options = dataclasses.replace(self, **filled)
    for name in ('seeds', 'ablation_seeds', 'posterior_images',
                 'posterior_samples'):
      if getattr(options, name) < 1:
        raise StudySettingsError(f'--{name} must be >= 1, got '
                                 f'{getattr(options, name)}.')
    for name, known in (('lesion_variants', synthetic_lesions.VARIANTS),
                        ('cell_variants', synthetic_cells.VARIANTS)):
      unknown = set(getattr(options, name)) - set(known)
      if unknown:
        raise StudySettingsError(f'Unknown {name} {sorted(unknown)}; '
                                 f'expected some of {known}.')
    if options.lesion_variants and options.generalisation_config:
      _check_generalisation_config(options)
    return options


def seeds_of(options: StudyOptions, task: str, variant: str) -> int:
  """How many seeds (0..n-1) the study trains of `task:variant`."""
  if task == LESIONS and variant in ABLATION_VARIANTS:
    return options.ablation_seeds
  return options.seeds


def seeds_by_variant(options: StudyOptions, task: str,
                     variants: Sequence[str]) -> Dict[str, List[int]]:
  """`variant -> [trained seeds]` (recorded in the results)."""
  return {v: list(range(seeds_of(options, task, v))) for v in variants}


def data_version(builder_config: str) -> str:
  """'v1' or 'v2': which generator a synthetic-lesions builder config
  uses (`StudySettingsError`, a ValueError, naming it when the builder has
  no such config)."""
  configs = {c.name: c for c in
             synthetic_lesions_dataset_builder.Builder.BUILDER_CONFIGS}
  if builder_config not in configs:
    raise StudySettingsError(
        f'--generalisation_config={builder_config!r} is not a '
        f'synthetic_lesions builder config; expected one of {sorted(configs)}.')
  spec = configs[builder_config].spec
  return 'v2' if isinstance(spec, generator_v2.LesionsSpecV2) else 'v1'


def _check_generalisation_config(options: StudyOptions) -> None:
  """The generalisation set must be of the training set's data version
  (v2's `many_lesions` for v2, `v1_many_lesions` for v1): the other
  version's images are drawn differently."""
  trained_on = make_config(LESIONS, options.lesion_variants[0], 0,
                           options).data.builder_config
  wanted, got = data_version(trained_on), data_version(
      options.generalisation_config)
  if wanted != got:
    raise StudySettingsError(
        f'--generalisation_config={options.generalisation_config!r} is '
        f'synthetic lesions {got}, the study trains on {trained_on!r} '
        f'({wanted}); pick a {wanted} config (v2: many_lesions, '
        'few_lesions; v1: v1_many_lesions).')


def make_config(task: str, variant: str, seed: int,
                options: StudyOptions) -> ml_collections.ConfigDict:
  """The task config of one run with the study's overrides."""
  config = TASK_MODULES[task].get_config(
      f'{variant},tiny' if options.tiny else variant)
  config.seed = seed
  config.data.data_dir = options.data_dir
  if options.steps is not None:
    # Keep the learning-rate drops at the same fractions of training.
    scale = options.steps / config.num_train_steps
    config.optimizer.boundaries = tuple(
        max(1, int(round(b * scale))) for b in config.optimizer.boundaries)
    config.num_train_steps = options.steps
    config.log_every_steps = min(config.log_every_steps, options.steps)
    config.checkpoint_every_steps = min(config.checkpoint_every_steps,
                                        options.steps)
  if options.num_samples is not None:
    config.eval.num_samples = options.num_samples
    # The Hamming threshold equals the number of clustered samples (at most
    # 16 are clustered), as the paper's 16 for 16 and 32 for 32 (Appx. H).
    config.eval.cluster_alpha = min(options.num_samples, 16)
  if options.num_eval_images is not None:
    config.eval.num_examples = options.num_eval_images
  if not config.eval.num_samples:
    raise StudySettingsError(f'{task}:{variant} evaluates no samples; pass '
                             '--num_samples.')
  return config


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
  with open(os.path.join(out_dir, 'metrics.json')) as f:
    metrics = json.load(f)
  with np.load(os.path.join(out_dir, 'per_image.npz')) as per_image:
    return metrics, {k: per_image[k] for k in per_image.files}


def save_eval(out_dir: str, result) -> None:
  """Writes an `EvalResult`'s metrics.json and per_image.npz to `out_dir`."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'metrics.json'), 'w') as f:
    json.dump(result.metrics, f, indent=2, sort_keys=True)
  np.savez(os.path.join(out_dir, 'per_image.npz'), **result.per_image)


def is_evaluated(out_dir: str) -> bool:
  return all(os.path.exists(os.path.join(out_dir, name))
             for name in ('metrics.json', 'per_image.npz'))


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
    `trained` (whether this call trained or evaluated) and `run_dir`.
  """
  eval_dir = outputs.final_results_dir(run_dir, config)
  timing_path = os.path.join(run_dir, TIMING_FILE)
  if os.path.exists(os.path.join(run_dir, 'config.json')):
    _check_same_config(config, run_dir)  # Also before resuming a run.
  trained = completeness_problem(config, run_dir) is not None
  if trained:
    previous = 0.0
    if os.path.exists(timing_path):
      with open(timing_path) as f:
        previous = json.load(f)['wall_time_s']
    start = time.time()
    try:
      train_lib.train_and_evaluate(config, run_dir)
    finally:
      # Also after an interruption, so a resumed run's time adds up.
      with open(timing_path, 'w') as f:
        json.dump({'wall_time_s': previous + time.time() - start}, f)
    problem = completeness_problem(config, run_dir)
    if problem:
      raise RunIncompleteError(f'{run_dir} is not complete ({problem}); '
                               'rerun the same command to continue.')
  metrics, per_image = load_eval(eval_dir)
  wall_time = None  # Unknown for a run trained outside the study.
  if os.path.exists(timing_path):
    with open(timing_path) as f:
      wall_time = json.load(f)['wall_time_s']
  return dict(metrics=metrics, per_image=per_image, wall_time_s=wall_time,
              trained=trained, run_dir=run_dir)


def run_dir_of(options: StudyOptions, task: str, variant: str,
               seed: int) -> str:
  return os.path.join(options.workdir, TASK_DIRS[task], variant,
                      f'seed{seed}')


def cached_lesion_arrays(options: StudyOptions, variant: str, seed: int,
                         cache_name: str, num_images: int,
                         compute) -> Dict[str, np.ndarray]:
  """An analysis of one finished lesions run, kept in its folder.

  `compute(run, examples, config)` (`run` from `eval.restore.restore_latest`,
  `examples` the first `num_images` test images) returns named arrays; they
  are computed once into `<run_dir>/<cache_name>` (.npz) and read from there.
  """
  run_dir = run_dir_of(options, LESIONS, variant, seed)
  cache = os.path.join(run_dir, cache_name)
  if not os.path.exists(cache):
    config = make_config(LESIONS, variant, seed, options)
    run = restore.restore_latest(run_dir, config)
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
  entry.update(
      num_seeds=len(runs), num_train_steps=config.num_train_steps,
      batch_size=config.batch_size,
      num_images=runs[0]['metrics']['num_images'],
      num_samples=runs[0]['metrics']['num_samples'],
      wall_time_s_per_seed=[r['wall_time_s'] for r in runs])
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
