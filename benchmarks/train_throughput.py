"""Training throughput: images/s and achieved GFLOP/s of the train step.

  python -m benchmarks.train_throughput [--quick] [--setups lidc]

`--quick` runs the experiments' `tiny` variants (32x32 smoke configs).

For each setup of `common.TRAIN_SETUPS` (the LIDC HPU-Net at 128x128, batch 8,
and the synthetic-lesions HPU-Net at 64x64, batch 16) this compiles the
trainer's step (augmentation + loss + gradients + Adam, state donated) once
per XLA option set of `common.COMPILER_OPTIONS` (XLA's defaults, and
convolutions on XLA's Eigen kernels instead of YNNPACK), times the compiled
steps round-robin in steady state and divides XLA's FLOP count of the step by
the median time. The fraction is taken of a matmul peak measured in the same
process (best f32 2048x2048 `jnp.dot`). The on-device augmentation is timed
alone as well, to show its share of the step.
"""
import jax

from benchmarks import common
from benchmarks import train_step

NAME = 'train_throughput'


def _extra_flags(parser):
  parser.add_argument('--setups', nargs='+', default=list(common.TRAIN_SETUPS),
                      choices=list(common.TRAIN_SETUPS))
  parser.add_argument('--runs', type=int, default=None,
                      help='timed steps per setup (default 5, quick 2).')
  parser.add_argument('--step_source', default='trainer',
                      choices=list(train_step.STEP_SOURCES),
                      help="'trainer': experiments.train_step.make_train_step; "
                           "'composed': the same computation built here.")


def time_augmentation(config, batch, num_runs: int) -> common.Timing:
  """Steady-state time of the jitted `augment_batch` on `batch`."""
  from datasets import augment  # pylint: disable=g-import-not-at-top
  augment_fn = jax.jit(lambda rng, b: augment.augment_batch(
      rng, b, **config.augment.to_dict()))
  rng = jax.random.PRNGKey(0)
  return common.time_calls(lambda: augment_fn(rng, batch), num_runs=num_runs)


def main():
  args = common.parse_args(__doc__.splitlines()[0], _extra_flags,
                           retain_freed_memory=True)  # As the trainer.
  num_runs = args.runs or (2 if args.quick else 5)
  common.enable_compilation_cache()
  machine = common.machine_info()
  peak_before = common.matmul_peak_gflops()
  results, rows = {}, []
  for name in args.setups:
    config = common.experiment_config(name, tiny=args.quick)
    setups = train_step.build_train_steps(config, args.step_source,
                                      args.compiler_options)
    first = next(iter(setups.values()))
    augment_timing = time_augmentation(config, first.batch, num_runs)
    timings = common.time_interleaved(
        {options: train_step.train_step_caller(setup)
         for options, setup in setups.items()}, num_runs=num_runs)
    results[name] = {
        'image_size': list(config.image_size),
        'batch_size': config.batch_size,
        'model': config.model.to_dict(),
        'step_source': first.source,
        'augmentation_only': augment_timing.as_dict(),
        'by_compiler_options': {},
    }
    for options, setup in setups.items():
      timing = timings[options]
      results[name]['by_compiler_options'][options] = {
          'compiler_options': common.COMPILER_OPTIONS[options],
          'compile_s': setup.compile_s,
          'step': timing.as_dict(),
          'images_per_s': config.batch_size / timing.median_s,
          'gflop_per_step': setup.flops / 1e9,
          'achieved_gflop_per_s': setup.flops / timing.median_s / 1e9,
          'achieved_gflop_per_s_best': setup.flops / timing.min_s / 1e9,
      }
      rows.append([name, f'{config.image_size[0]}x{config.image_size[1]}',
                   config.batch_size, options, setup.flops / 1e9,
                   timing.median_s, timing.min_s, augment_timing.median_s,
                   config.batch_size / timing.median_s,
                   setup.flops / timing.median_s / 1e9])
  # Peak measured before and after the steps; the best of the two is the
  # machine's (the load of other users can only lower it).
  peak = max(peak_before, common.matmul_peak_gflops())
  for row in rows:
    fraction = row[-1] / peak
    results[row[0]]['by_compiler_options'][row[3]][
        'fraction_of_matmul_peak'] = fraction
    row.append(f'{100 * fraction:.1f}%')
  common.print_table(
      f'Train step, {machine["cpu_model"]}, {machine["usable_cores"]} cores, '
      f'matmul peak {peak:.0f} GFLOP/s, load {machine["load_average_1_5_15"]}',
      ['setup', 'size', 'batch', 'XLA options', 'GFLOP/step', 'median s',
       'min s', 'augment s', 'images/s', 'GFLOP/s', 'of peak'], rows)
  common.write_results(NAME, {'matmul_peak_gflop_per_s': peak,
                              'setups': results}, machine, args.out)


if __name__ == '__main__':
  main()
