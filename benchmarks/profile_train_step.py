"""Where the train step's time goes: XLA:CPU kernel time by kernel family.

  python -m benchmarks.profile_train_step [--quick] [--calls 3] [--batch_size 32]

Compiles the trainer's LIDC step (batch 8 unless `--batch_size`, `eigen_conv`,
the trainer's malloc settings, as `benchmarks.train_throughput`), runs it
twice, then traces `--calls` steps with `jax.profiler` (XLA's per-kernel trace
events on) and sums kernel durations by family: the kernel's name without its
`.N` suffix (`transpose_copy_fusion`, `ynn_fusion`, `multiply_add_fusion`,
...). XLA:CPU ends a convolution's event when it hands the work to Eigen's
thread pool, so the convolutions' time is read as the rest: the steps' wall
time minus all other kernels (`benchmarks.profile_convolutions` times them
layer by layer). The shared `--compiler_options` flag is not used (always
`eigen_conv`).
"""
import collections
from typing import Dict

import jax

from benchmarks import common
from benchmarks import train_step

NAME = 'profile_train_step'
# Convolution kernels' events: hand-overs to Eigen, not their run time.
_CONVOLUTION_EVENTS = ('convolution', 'conv_general_dilated')


def _extra_flags(parser):
  parser.add_argument('--calls', type=int, default=3,
                      help='traced steps (default 3).')
  parser.add_argument('--batch_size', type=int, default=None,
                      help='batch size (default: the LIDC setup, 8).')


def kernel_seconds_by_family(trace_events) -> Dict[str, float]:
  """Seconds of the complete kernel events, summed by kernel name."""
  totals = collections.Counter()
  for name, seconds in common.kernel_events(trace_events):
    totals[name] += seconds
  return dict(totals)


def shares(by_family: Dict[str, float], wall_s: float) -> Dict[str, float]:
  """Per-call seconds by family, the convolutions' hand-over events
  replaced by the convolutions' time: `wall_s` minus every other kernel."""
  others = {k: v for k, v in by_family.items()
            if k not in _CONVOLUTION_EVENTS}
  return dict(others, convolutions=wall_s - sum(others.values()))


def main():
  common.enable_kernel_trace_events()
  args = common.parse_args(__doc__.splitlines()[0], _extra_flags,
                           retain_freed_memory=True)  # As the trainer.
  common.enable_compilation_cache()
  machine = common.machine_info()
  config = common.experiment_config('lidc', tiny=args.quick,
                                    batch_size=args.batch_size)
  setup = train_step.build_train_steps(config, 'trainer',
                                       ['eigen_conv'])['eigen_conv']
  step = train_step.train_step_caller(setup)
  for _ in range(2):
    jax.block_until_ready(step())
  events, wall_s, path = common.traced_events(step, args.calls,
                                              'trace_train_step_')
  per_call = {k: v / args.calls
              for k, v in kernel_seconds_by_family(events).items()}
  hand_over_s = sum(per_call.get(k, 0.0) for k in _CONVOLUTION_EVENTS)
  per_call = shares(per_call, wall_s)
  results = {'batch_size': config.batch_size,
             'image_size': list(config.image_size), 'calls': args.calls,
             'wall_s_per_call': wall_s, 'kernel_s_per_call': per_call,
             'convolution_hand_over_events_s_per_call': hand_over_s,
             'trace': path}
  top = sorted(per_call.items(), key=lambda kv: -kv[1])
  common.print_table(
      f'LIDC train step, batch {config.batch_size}, under the profiler: '
      f'{wall_s:.2f} s a step (largest 20 kernel families)',
      ['kernel family', 's per step', 'share'],
      [[k, v, f'{100 * v / wall_s:.1f} %'] for k, v in top[:20]])
  common.write_results(NAME, results, machine, args.out)


if __name__ == '__main__':
  main()
