"""Peak memory of a training step: XLA's buffer sizes and the process RSS.

  python -m benchmarks.memory [--quick] [--no_run]

For the LIDC HPU-Net at batch 8 (our CPU setting) and 32 (the paper's) and
the synthetic-lesions HPU-Net at batch 16, this compiles the trainer's step
and reports `compiled.memory_analysis()`: arguments (state + batch), outputs,
the part of the outputs aliased to the donated state, and XLA's temporary
buffers (activations kept for the backward pass, gradients, workspace). Their
sum less the aliased bytes estimates the step's peak. Unless `--no_run`, it
also runs two steps and reads the process's peak RSS over them (the kernel's
high-water mark, reset just before; it includes Python and JAX runtime
overhead).
"""
from benchmarks import common
from benchmarks import train_step

NAME = 'memory'
MIB = 2**20

# (setup, batch size); None = the setup's own batch size.
_CASES = (('lidc', None), ('lidc', 32), ('synthetic_lesions', None))


def _extra_flags(parser):
  parser.add_argument('--no_run', action='store_true',
                      help='only compile (XLA sizes, no RSS).')
  parser.add_argument('--step_source', default='trainer',
                      choices=list(train_step.STEP_SOURCES))


def reset_peak_rss() -> bool:
  """Resets the kernel's RSS high-water mark (Linux); False if unsupported."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def high_water_rss_mib() -> float:
  """VmHWM of this process, MiB."""
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) / 1024
  return float('nan')


def main():
  args = common.parse_args(__doc__.splitlines()[0], _extra_flags,
                           retain_freed_memory=True)  # As the trainer.
  common.enable_compilation_cache()
  machine = common.machine_info()
  results, rows = [], []
  for setup_name, batch_size in _CASES:
    if args.quick and batch_size is not None:
      continue
    config = common.experiment_config(setup_name, tiny=args.quick)
    if batch_size is not None:
      config.batch_size = batch_size
    # Memory is measured with XLA's default options only.
    setup = train_step.build_train_steps(config, args.step_source)['default']
    memory = setup.memory
    estimate = (memory['argument_size_in_bytes'] +
                memory['output_size_in_bytes'] -
                memory['alias_size_in_bytes'] + memory['temp_size_in_bytes'])
    entry = {'setup': setup_name, 'batch_size': config.batch_size,
             'image_size': list(config.image_size),
             'step_source': setup.source, 'xla_bytes': memory,
             'xla_peak_estimate_mib': estimate / MIB}
    rss_before = rss_peak = float('nan')
    if not args.no_run:
      rss_before = common.current_rss_mib()
      if reset_peak_rss():
        common.time_calls(train_step.train_step_caller(setup), num_runs=1)
        rss_peak = high_water_rss_mib()
      entry.update(rss_before_step_mib=rss_before, rss_peak_step_mib=rss_peak)
    results.append(entry)
    rows.append([setup_name, config.batch_size,
                 f'{config.image_size[0]}x{config.image_size[1]}',
                 memory['argument_size_in_bytes'] / MIB,
                 memory['temp_size_in_bytes'] / MIB,
                 memory['alias_size_in_bytes'] / MIB, estimate / MIB,
                 rss_before, rss_peak])
  common.print_table(
      f'Train step memory (MiB), {machine["cpu_model"]}, '
      f'load {machine["load_average_1_5_15"]}',
      ['setup', 'batch', 'size', 'arguments', 'XLA temp', 'aliased',
       'XLA peak est.', 'RSS before', 'RSS peak (step)'], rows)
  common.write_results(NAME, {'cases': results}, machine, args.out)


if __name__ == '__main__':
  main()
