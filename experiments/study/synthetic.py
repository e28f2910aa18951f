r"""The synthetic study (issues 6, 12): the paper's claims on known-answer data.

  python -m experiments.study.synthetic --workdir=/tmp/study \
      [--seeds=3] [--ablation_seeds=2] [--steps=N] [--variants=...] [--tiny]

1. Trains and evaluates every variant of `experiments/synthetic_lesions.py`
   (`hpunet`, `spunet`, `global_latents`, `local_latents`, `no_topk`; data
   v2, builder config `default`) in `<workdir>/lesions/<variant>/seed<k>`,
   then `experiments/synthetic_cells.py` (`hpunet`, `spunet`) in
   `<workdir>/cells/...`, each with `train_lib.train_and_evaluate`: seeds
   `0..seeds-1` of hpunet, spunet and the cells, `0..ablation_seeds-1` of
   each ablation (`study_options.seeds_of`). A finished, evaluated run is
   loaded (its config must match: `StudySettingsError` otherwise), an
   interrupted one resumes from its checkpoint: rerun the same command to
   continue.
2. Pools each variant's seeds (`eval.bootstrap.pooled_bootstrap`) into
   `<results_dir>/synthetic_lesions.json` and `synthetic_cells.json`: per
   variant the `metrics.json` keys (mean and `_std`), `seed_means`,
   `seed_std`, `num_seeds`, `training_end`, `wall_time_s`; `oracle`,
   `seeds` (per variant), `diagnostics`, `figures`, `command`, `machine`.
3. `per_level` (lesions HPU-Net): one latent level sampled, the others at
   the prior mean; each sample decoded into grader style and per-lesion
   presence (`study_analysis.decode_lesion_samples`, v1 and v2); P(style
   differs), P(a lesion's presence differs) against `oracle` and `truth`.
4. `posterior` (`study_posterior`, every lesion variant): IoU_rec from the
   posterior mean and from posterior samples, and the mean sigma per level;
   `answer` (`study_answer`, every lesion variant): `exact_ged` split into
   the samples' pixel errors and their probabilities' errors.
   `purity` (`study_cells`, every cells variant): how often a prior sample
   gives each true cell one label, inside and across the latent squares.
5. `generalisation` (lesions HPU-Net, sPU-Net): evaluated on
   `--generalisation_config` (v2 `many_lesions`: 5-6 lesions; trained on
   2-4), which must be of the training data's version.
6. Figures in `<results_dir>/figures/`: seed 0's of every variant, the
   per-level chart, and every run's training curves (GECO's phases).
7. `diagnostics` (`study_diagnostics`): GECO's multiplier rule per variant,
   the lambda the authors' `adam` rule can reach, the answer entropy.

`--tiny` runs the whole pipeline on the `tiny` configs in seconds (the test).

The v2 study (3 seeds of hpunet and spunet, 2 of each
ablation, cells included):

  python -m experiments.study.synthetic --workdir=/tmp/study_v2 \
      --seeds=3 --ablation_seeds=2 --results_dir=results

Measured on the quiet 2-core AMD EPYC: the 12 lesion runs 2 h 33 min (sum
of their `wall_time_s`; the sPU-Net's runs about 20 min each, the others
about 10), the 6 cell runs 1 h 7 min (7 and 15 min each), the analyses
and generalisation evaluations about 30 min: about 4 h 10 min (docs/synthetic_study.md, "Running the study"); a rerun
with every run finished, 1.5 min. The study on version 1 (1000 steps) and
its results: `results/v1/`.
"""
import json
import os
import shutil
import sys
from typing import Any, Dict, List, Sequence

# One OpenBLAS thread (see experiments/train.py); before NumPy loads it.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

from absl import app
from absl import flags
import jax

from eval import evaluator
from eval import outputs
import hpunet_jax
from experiments.study import analysis as study_analysis
from experiments.study import answer as study_answer
from experiments.study import cells as study_cells
from experiments.study import diagnostics as study_diagnostics
from experiments.study import posterior as study_posterior
from experiments.study import options as study_options
from experiments.study import runs as study_runs
from experiments.study import verdicts as study_verdicts
from experiments.study.options import CELLS, LESIONS, StudyOptions
from hpunet_jax.runtime import machine
from hpunet_jax.runtime import quiet_logs

# Table 1/2 columns first; other metrics follow.
LESION_COLUMNS = ('iou_rec', 'ged_16', 'ged_100', 'hm_iou', 'exact_ged',
                  'exact_hm_iou')
CELL_COLUMNS = ('iou_rec', 'rand_error')
# The evaluator's training-curves figure (GECO's lambda, constraint, KL).
CURVES_FIGURE = 'training_curves.png'


def per_level(options: StudyOptions) -> Dict[str, Any]:
  """Per-level analysis of the lesions HPU-Net over all seeds."""
  if 'hpunet' not in options.lesion_variants:
    return {'skipped': 'hpunet is not among --variants'}
  per_seed = []
  cache_name = (f'per_level_{options.per_level_images}x'
                f'{options.per_level_samples}_t{options.presence_threshold}'
                '.npz')
  num_seeds = study_options.seeds_of(options, LESIONS, 'hpunet')
  for seed in range(num_seeds):
    def compute(run, examples, config, seed=seed):
      values = study_analysis.per_level_per_image(
          run.model, run.params, examples,
          num_samples=options.per_level_samples,
          batch_size=config.eval.batch_size, seed=seed,
          presence_threshold=options.presence_threshold)
      # Flat `<setting>.<metric>` names for the .npz.
      return {f'{s}.{m}': v for s, metrics in values.items()
              for m, v in metrics.items()}
    stored = study_runs.cached_run_arrays(
        options, LESIONS, 'hpunet', seed, cache_name, options.per_level_images,
        compute)
    values = {}
    for key, array in stored.items():
      setting, metric = key.split('.', 1)
      values.setdefault(setting, {})[metric] = array
    per_seed.append(values)
  summary = {setting: study_analysis.pool_seeds(
      [values[setting] for values in per_seed], options.num_resamples,
      rng_seed=0) for setting in per_seed[0]}
  return {'settings': summary,
          'num_images': options.per_level_images,
          'num_samples': options.per_level_samples,
          'presence_threshold': options.presence_threshold,
          'num_seeds': num_seeds,
          'levels': 'level_0 is the coarsest (most global) latent level; '
                    'level_<l> samples only that level, the others at the '
                    'prior mean; oracle = true-distribution samples through '
                    'the same decoder; truth = the exact probabilities.'}


def generalisation(options: StudyOptions) -> Dict[str, Any]:
  """Lesions HPU-Net and sPU-Net evaluated on another builder config."""
  builder_config = options.generalisation_config
  if not builder_config:
    return {'skipped': 'disabled by --generalisation_config=""'}
  out = {'builder_config': builder_config,
         'data_version': study_options.data_version(builder_config)}
  trained_on = study_options.make_config(LESIONS, 'hpunet', 0,
                                     options).data.builder_config
  if builder_config == trained_on:
    out['note'] = ('the training data set itself: a pipeline check, not a '
                   'generalisation result')
  for variant in ('hpunet', 'spunet'):
    if variant not in options.lesion_variants:
      continue
    runs = []
    for seed in range(study_options.seeds_of(options, LESIONS, variant)):
      config = study_options.make_config(LESIONS, variant, seed, options)
      config.data.builder_config = builder_config
      run_dir = study_runs.run_dir_of(options, LESIONS, variant, seed)
      out_dir = os.path.join(run_dir, 'generalisation', builder_config,
                             config.eval.split)
      if not study_runs.is_evaluated(out_dir):
        run = hpunet_jax.load(run_dir, config=config)
        result = evaluator.Evaluator(config, run.model).run(
            run.params, config.eval.split, config.eval.num_samples,
            rng_seed=seed)
        study_runs.save_eval(out_dir, result)
      metrics, per_image = study_runs.load_eval(out_dir)
      runs.append(dict(metrics=metrics, per_image=per_image, wall_time_s=0.0))
    out[variant] = study_runs.pool_runs(runs, config, options)
    for key in ('wall_time_s', 'wall_time_s_per_seed'):
      del out[variant][key]
  return out


def copy_figures(task: str, variants: Sequence[str],
                 options: StudyOptions) -> List[str]:
  """Copies evaluation figures to `<results_dir>/figures/`: seed 0's
  (`<task>_<variant>_<name>.png`) and every seed's training curves, GECO's
  phases per run (`<task>_<variant>_seed<k>_training_curves.png`)."""
  figure_dir = os.path.join(options.results_dir, 'figures')
  os.makedirs(figure_dir, exist_ok=True)
  copied = []
  for variant in variants:
    for seed in range(study_options.seeds_of(options, task, variant)):
      config = study_options.make_config(task, variant, seed, options)
      run_dir = study_runs.run_dir_of(options, task, variant, seed)
      eval_dir = outputs.final_results_dir(run_dir, config)
      for name in sorted(os.listdir(eval_dir)):
        if name == CURVES_FIGURE:
          target = f'{task}_{variant}_seed{seed}_{name}'
        elif name.endswith('.png') and seed == 0:
          target = f'{task}_{variant}_{name}'
        else:
          continue
        target = os.path.join(figure_dir, target)
        shutil.copyfile(os.path.join(eval_dir, name), target)
        copied.append(target)
  return copied


def _print_table(title: str, results: Dict[str, Any],
                 variants: Sequence[str], preferred: Sequence[str]) -> None:
  rows = {v: results[v] for v in variants}
  if 'oracle' in results:
    rows['oracle'] = results['oracle']
  columns = study_analysis.metric_columns(list(rows.values()), preferred)
  print(f'\n{title}')
  print(study_analysis.format_table(rows, columns), flush=True)


def _print_training_end(results: Dict[str, Any],
                        variants: Sequence[str]) -> None:
  """Prints lambda, rec per pixel and KL at the end of training."""
  bounds = results['diagnostics']['geco_lambda_at_lr_rate']
  rules = results['diagnostics']['geco_multiplier']
  print('\nEnd of training (mean of the last 5 logged steps and of the seeds)')
  for variant in variants:
    end = results[variant].get('training_end', {})
    kls = ' '.join(f'{end[k]:.3g}' for k in sorted(end)
                   if k.startswith('kl_') and k != 'kl_sum')
    bound = (f' (full rate: {bounds[variant]:.2f})' if variant in bounds
             else f' ({rules[variant]})' if variant in rules else '')
    print(f"{variant:16s} lambda {end.get('lambda', float('nan')):.3f}{bound}"
          f"  rec/px {end.get('rec_mean', float('nan')):.3f}"
          f"  KL {end.get('kl_sum', float('nan')):.2f} nats [{kls}]")
  entropy = results['diagnostics'].get('answer_entropy_nats')
  if entropy:
    print(f"entropy of the exact answer distribution: {entropy['mean']:.2f} "
          f"± {entropy['std']:.2f} nats per image", flush=True)


def _print_extras(results: Dict[str, Any]) -> None:
  """Prints the per-level and generalisation sections of the lesions."""
  settings = results['per_level'].get('settings')
  if settings:
    print('\nPer level: P(differs between two samples) when only that level '
          'is sampled (level_0 = most global)')
    print(study_analysis.format_table(settings, (
        'p_style_differs', 'p_presence_differs', 'frac_style_undefined')))
  print('\nPosterior: IoU_rec from its mean and from its samples, mean '
        'sigma per level (posterior, prior)')
  print(study_posterior.format_posterior(results['posterior'],
                                         results['variants']))
  print('\nAnswer: exact GED² of the samples and of the samples snapped to '
        'the gradings they decode to; style and presence errors')
  print(study_answer.format_answer(results['answer'], results['variants']))
  generalisation = results['generalisation']
  rows = {v: generalisation[v] for v in ('hpunet', 'spunet')
          if v in generalisation}
  if rows:
    rows['oracle'] = next(iter(rows.values())).get('oracle', {})
    print(f"\nGeneralisation to {generalisation['builder_config']}")
    print(study_analysis.format_table(rows, study_analysis.metric_columns(
        list(rows.values()), LESION_COLUMNS)), flush=True)


def _write_json(path: str, content: Dict[str, Any]) -> None:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'w') as f:
    json.dump(content, f, indent=2, sort_keys=False)
  print(f'[study] wrote {path}', flush=True)


def run_study(options: StudyOptions) -> Dict[str, Dict[str, Any]]:
  """Runs the whole study.

  Returns:
    `{'synthetic_lesions': ..., 'synthetic_cells': ...}` as written to
    `<results_dir>/<task>.json` (a task without variants is left out).
  """
  options = options.resolved()
  common = {'command': options.command,
            'machine': machine.machine_info(), 'tiny': options.tiny}
  written = {}
  for task, variants, columns in (
      (LESIONS, options.lesion_variants, LESION_COLUMNS),
      (CELLS, options.cell_variants, CELL_COLUMNS)):
    if not variants:
      continue
    results = {'variants': list(variants),
               'seeds': study_options.seeds_by_variant(options, task, variants)}
    results.update(study_runs.run_task(task, variants, options))
    results['diagnostics'] = study_diagnostics.diagnostics_section(
        task, variants, options)
    if task == LESIONS:
      results['oracle'] = results[variants[0]].get('oracle', {})
      results['per_level'] = per_level(options)
      results['posterior'] = study_posterior.posterior_section(options)
      results['answer'] = study_answer.answer_section(options)
      results['generalisation'] = generalisation(options)
    else:
      results['purity'] = study_cells.purity_section(options)
    figures = copy_figures(task, variants, options)
    if task == LESIONS and 'settings' in results['per_level']:
      figures.append(study_analysis.per_level_figure(
          os.path.join(options.results_dir, 'figures',
                       f'{task}_per_level.png'),
          results['per_level']['settings']))
    results['figures'] = [os.path.relpath(p, options.results_dir)
                          for p in figures]
    results.update(common)
    _write_json(os.path.join(options.results_dir, f'{task}.json'), results)
    seed_counts = ', '.join(f'{v} {len(s)}'
                            for v, s in results['seeds'].items())
    _print_table(f'{task}: mean ± std (pooled bootstrap over the seeds: '
                 f'{seed_counts})', results, variants, columns)
    _print_training_end(results, variants)
    if task == LESIONS:
      _print_extras(results)
    else:
      print('\nPurity: fraction of a cell with its majority label per sample')
      print(study_cells.format_purity(results['purity'], variants))
    written[task] = results
  if LESIONS in written:  # Beside the lesions' results, all tasks judged.
    written[LESIONS]['verdicts'] = study_verdicts.verdicts_of_study(
        written, options)
    _write_json(os.path.join(options.results_dir, f'{LESIONS}.json'),
                written[LESIONS])
    print('\nVerdicts (docs/synthetic_study.md, "Criteria of the v3 '
          'study"):')
    for name, verdict in written[LESIONS]['verdicts'].items():
      print(f'  {name}: {verdict}')
  return written


_DEFAULTS = StudyOptions(workdir='')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder of all runs.')
_RESULTS_DIR = flags.DEFINE_string('results_dir', _DEFAULTS.results_dir,
                                   'Where the JSON files and figures go.')
_SEEDS = flags.DEFINE_integer(
    'seeds', _DEFAULTS.seeds, 'Seeds (0..n-1) of hpunet, spunet and the cells '
    'variants.')
_ABLATION_SEEDS = flags.DEFINE_integer(
    'ablation_seeds', None, 'Seeds of each lesion ablation (global_latents, '
    'local_latents, no_topk); default: --seeds.')
_STEPS = flags.DEFINE_integer('steps', None, 'Training steps (default: the '
                              "config's; learning-rate drops scale along).")
_VARIANTS = flags.DEFINE_list('variants', list(_DEFAULTS.lesion_variants),
                              'synthetic_lesions variants.')
_CELL_VARIANTS = flags.DEFINE_list('cell_variants',
                                   list(_DEFAULTS.cell_variants),
                                   'synthetic_cells variants ("" = none).')
_TINY = flags.DEFINE_bool('tiny', False, 'Tiny configs and settings.')
_NUM_EVAL_IMAGES = flags.DEFINE_integer(
    'num_eval_images', None, "Test images per run (default: the config's).")
_NUM_SAMPLES = flags.DEFINE_integer(
    'num_samples', None, "Samples per test image (default: the config's).")
_PER_LEVEL_IMAGES = flags.DEFINE_integer(
    'per_level_images', None, 'Images of the per-level analysis (100; tiny 2).')
_PER_LEVEL_SAMPLES = flags.DEFINE_integer(
    'per_level_samples', None, 'Samples per image and level setting (32; '
    'tiny 4).')
_POSTERIOR_IMAGES = flags.DEFINE_integer(
    'posterior_images', None, 'Images of the posterior analysis (100; tiny '
    '2).')
_POSTERIOR_SAMPLES = flags.DEFINE_integer(
    'posterior_samples', None, 'Posterior samples per image and grading '
    '(4; tiny 2).')
_PURITY_IMAGES = flags.DEFINE_integer(
    'purity_images', None, 'Images of the cells purity analysis (100; tiny 2).')
_PURITY_EROSION = flags.DEFINE_integer(
    'purity_erosion', _DEFAULTS.purity_erosion,
    'Pixels eroded from each true cell in the purity analysis.')
_PRESENCE_THRESHOLD = flags.DEFINE_float(
    'presence_threshold', _DEFAULTS.presence_threshold,
    "Covered fraction of a lesion's narrowest-style mask that counts as "
    'present.')
_GENERALISATION_CONFIG = flags.DEFINE_string(
    'generalisation_config', None, 'Lesions builder config of the '
    'generalisation evaluation, of the training data\'s version (v2: '
    'many_lesions, 5-6 lesions; tiny: tiny); "" skips it.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data directory.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  quiet_logs.quiet_libraries()  # Orbax's per-save INFO lines, TFDS's.
  options = StudyOptions(
      workdir=_WORKDIR.value, results_dir=_RESULTS_DIR.value,
      seeds=_SEEDS.value, ablation_seeds=_ABLATION_SEEDS.value,
      steps=_STEPS.value,
      lesion_variants=tuple(_VARIANTS.value),
      cell_variants=tuple(_CELL_VARIANTS.value), tiny=_TINY.value,
      num_eval_images=_NUM_EVAL_IMAGES.value, num_samples=_NUM_SAMPLES.value,
      per_level_images=_PER_LEVEL_IMAGES.value,
      per_level_samples=_PER_LEVEL_SAMPLES.value,
      posterior_images=_POSTERIOR_IMAGES.value,
      posterior_samples=_POSTERIOR_SAMPLES.value,
      purity_images=_PURITY_IMAGES.value,
      purity_erosion=_PURITY_EROSION.value,
      presence_threshold=_PRESENCE_THRESHOLD.value,
      generalisation_config=_GENERALISATION_CONFIG.value,
      data_dir=_DATA_DIR.value,
      command=' '.join(['python -m experiments.study.synthetic'] +
                       sys.argv[1:]))
  jax.config.update('jax_compilation_cache_dir', os.path.expanduser(
      os.path.join('~', '.cache', 'hpunet_jax', 'jax')))
  try:
    run_study(options)
  except (study_runs.RunIncompleteError, study_options.StudySettingsError) as e:
    sys.exit(f'study_synthetic: {e}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir'])
  app.run(main)
