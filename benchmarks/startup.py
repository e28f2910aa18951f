"""Where the time before the first train step goes, per XLA:CPU option set.

  python -m benchmarks.startup [--quick] [--variants eigen_conv dot_only no_ynn]

Builds the trainer's LIDC HPU-Net step at batch 8 (`--quick`: the tiny LIDC
config) on a synthetic batch and times its phases: model init
(`init_train_state`), tracing and lowering, then per variant: compiling from
an empty compilation cache, loading the same executable from the persistent
cache (after `jax.clear_caches()`), the first and the steady steps, and the
executable's kernel counts. The cache is a fresh temporary folder, so the
first compile of each variant is a real miss. Variants differ only in which
operations XLA:CPU hands to YNNPACK (`xla_cpu_experimental_ynn_fusion_type`):

  eigen_conv  the trainer's CPU option (`xla_options.EIGEN_CONV`): YNNPACK
              runs dots and reductions, Eigen the convolutions.
  dot_only    YNNPACK runs dots only; reductions become XLA loop kernels.
  no_ynn      no YNNPACK kernels at all.

XLA:CPU only (the options are CPU compile options); `--variants` picks them
(the shared `--compiler_options` flag is not used here). The variants measure
a trade that `benchmarks/notes/2026-12-02-startup-and-sampling-profile.md`
describes: each YNNPACK kernel costs time when the cached executable is
loaded, each XLA loop kernel costs LLVM time when it is compiled.
"""
import collections
import re
import statistics
import tempfile
import time
from typing import Any, Dict, Sequence

import jax
import jax.numpy as jnp

from benchmarks import common
from hpunet_jax.runtime import xla_options

NAME = 'startup'

VARIANTS = {
    'eigen_conv': dict(xla_options.EIGEN_CONV),
    'dot_only': {'xla_cpu_experimental_ynn_fusion_type':
                 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'},
    'no_ynn': {'xla_cpu_experimental_ynn_fusion_type': ''},
}


def kernel_counts(hlo_text: str) -> Dict[str, int]:
  """Kernels of an optimised HLO module, by kind.

  Returns:
    `{'ynn_fusions', 'loop_fusions', 'convolutions',
    'scalar_reductions_outside_the_model'}`: the last counts YNNPACK fusions
    that reduce to a scalar outside the model's Haiku scopes (per-leaf sums of
    the weight decay and the gradient norm).
  """
  counts = collections.Counter()
  for line in hlo_text.splitlines():
    if ' fusion(' in line:
      if '"__ynn_fusion"' in line:
        counts['ynn_fusions'] += 1
        name = re.search(r'op_name="([^"]*)"', line)
        if (re.search(r'= f32\[\] fusion', line) and name and
            '/hpunet/' not in name.group(1)):
          counts['scalar_reductions_outside_the_model'] += 1
      elif 'kind=kLoop' in line:
        counts['loop_fusions'] += 1
    elif re.search(r'= \S+ convolution\(', line):
      counts['convolutions'] += 1
  return {k: counts[k] for k in ('ynn_fusions', 'loop_fusions',
                                 'convolutions',
                                 'scalar_reductions_outside_the_model')}


def measure(config, variants: Sequence[str], num_steps: int = 3
            ) -> Dict[str, Any]:
  """The start-up phases of `config`'s train step for each variant.

  Args:
    config: an experiment config (`common.experiment_config`).
    variants: keys of `VARIANTS`.
    num_steps: steps timed after the first (median reported).

  Returns:
    `{'init_s', 'lower_s', 'variants': {name: {...}}}`, seconds.
  """
  from benchmarks import train_step as bench_step  # pylint: disable=g-import-not-at-top
  from hpunet_jax import models  # pylint: disable=g-import-not-at-top
  unknown = sorted(set(variants) - set(VARIANTS))
  if unknown:
    raise ValueError(f'Unknown variants {unknown}; expected some of '
                     f'{sorted(VARIANTS)}.')
  model = models.make_model(config.model_type, config.model.to_dict())
  batch = {k: jnp.asarray(v)
           for k, v in common.synthetic_batch(config).items()}
  start = time.perf_counter()
  step, state = bench_step._trainer_step(config, model, batch)  # pylint: disable=protected-access
  jax.block_until_ready(state)
  init_s = time.perf_counter() - start
  start = time.perf_counter()
  lowered = step.lower(state, batch)
  lower_s = time.perf_counter() - start
  results = {'init_s': init_s, 'lower_s': lower_s, 'variants': {}}
  for name in variants:
    options = VARIANTS[name]
    start = time.perf_counter()
    compiled = lowered.compile(compiler_options=options)
    compile_s = time.perf_counter() - start
    jax.clear_caches()  # The next compile must come from the disk cache.
    relowered = step.lower(state, batch)
    start = time.perf_counter()
    loaded = relowered.compile(compiler_options=options)
    load_s = time.perf_counter() - start
    current = jax.tree.map(jnp.copy, state)
    times = []
    for _ in range(num_steps + 1):
      start = time.perf_counter()
      current, scalars = loaded(current, batch)
      jax.block_until_ready(scalars)
      times.append(time.perf_counter() - start)
    results['variants'][name] = {
        'options': options, 'compile_empty_cache_s': compile_s,
        'load_from_cache_s': load_s, 'first_step_s': times[0],
        'step_median_s': statistics.median(times[1:]), 'step_runs_s': times,
        'kernels': kernel_counts(compiled.as_text())}
  return results


def _extra_flags(parser):
  parser.add_argument('--variants', nargs='+', default=list(VARIANTS),
                      choices=list(VARIANTS),
                      help='YNNPACK option sets to compare (default: all).')


def main():
  args = common.parse_args(__doc__.splitlines()[0], _extra_flags,
                           retain_freed_memory=True)  # As the trainer.
  # A fresh cache: the first compile of each variant is a real miss.
  cache = tempfile.mkdtemp(prefix='jax_cache_startup_')
  jax.config.update('jax_compilation_cache_dir', cache)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  machine = common.machine_info()
  config = common.experiment_config('lidc', tiny=args.quick)
  config.batch_size = 2 if args.quick else 8
  results = measure(config, args.variants, num_steps=1 if args.quick else 3)
  results.update(setup='lidc', image_size=list(config.image_size),
                 batch_size=config.batch_size,
                 compilation_cache=cache, quick=args.quick)
  print(f'\ninit_train_state {results["init_s"]:.1f} s, trace + lower '
        f'{results["lower_s"]:.1f} s')
  common.print_table(
      f'LIDC train step, batch {config.batch_size} (seconds)',
      ['variant', 'compile (empty cache)', 'load (cached)', 'first step',
       'step median', 'YNN kernels', 'loop kernels', 'scalar sums'],
      [[name, v['compile_empty_cache_s'], v['load_from_cache_s'],
        v['first_step_s'], v['step_median_s'], v['kernels']['ynn_fusions'],
        v['kernels']['loop_fusions'],
        v['kernels']['scalar_reductions_outside_the_model']]
       for name, v in results['variants'].items()])
  common.write_results(NAME, results, machine, args.out)


if __name__ == '__main__':
  main()
