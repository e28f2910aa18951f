"""Where sampling's time goes: XLA:CPU kernel time by kind, from a trace.

  python -m benchmarks.profile_sampling [--quick] [--num_samples 100]

Compiles `model.sample` of the LIDC HPU-Net for one 128x128 image (as
`benchmarks.sampling` does, with the evaluator's `eigen_conv` option), runs it
once, then traces `--calls` calls with `jax.profiler` (XLA's per-kernel trace
events on) and sums the kernels' durations by kind: YNNPACK fusions (the 1x1
convolutions, as dots), XLA loop fusions (bias, ReLU, residual sums,
up-sampling), and convolutions. XLA:CPU runs a convolution on Eigen's thread
pool and ends its event when the work is handed over, so convolution time is
read as the rest: the calls' wall time minus the other kernels. The shared
`--compiler_options` flag is not used (always `eigen_conv`).
"""
import collections
from typing import Dict

import jax

from benchmarks import common
from benchmarks import sampling

NAME = 'profile_sampling'
# Trace event names (without their `.N` suffix) -> kind.
_KINDS = (('ynn_fusion', 'ynnpack_fusions'), ('conv', 'convolution_events'),
          ('fusion', 'loop_fusions'))


def kernel_seconds(trace_events) -> Dict[str, float]:
  """Sums complete kernel events (`common.kernel_events`) by kind, in
  seconds."""
  totals = collections.Counter()
  for name, seconds in common.kernel_events(trace_events):
    kind = next((k for prefix, k in _KINDS if prefix in name), 'other')
    totals[kind] += seconds
  return dict(totals)


def _extra_flags(parser):
  parser.add_argument('--num_samples', type=int, default=None,
                      help='samples per call (default 100; quick 8).')
  parser.add_argument('--calls', type=int, default=2,
                      help='traced calls (default 2).')


def main():
  common.enable_kernel_trace_events()
  args = common.parse_args(__doc__.splitlines()[0], _extra_flags)
  num_samples = args.num_samples or (8 if args.quick else 100)
  common.enable_compilation_cache()
  machine = common.machine_info()
  config, model, params, image = sampling.one_image_setup(args.quick)
  rng = jax.random.PRNGKey(1)
  sample = common.compile_with(jax.jit(model.sample, static_argnums=3),
                               (params, rng, image, num_samples),
                               'eigen_conv')
  sample(params, rng, image).block_until_ready()
  events, wall_s, path = common.traced_events(
      lambda: sample(params, rng, image), args.calls, 'trace_sampling_')
  per_call = {k: v / args.calls for k, v in kernel_seconds(events).items()}
  # The hand-over events are part of the convolutions' share, not added.
  hand_over_s = per_call.pop('convolution_events', 0.0)
  per_call['convolutions'] = wall_s - sum(per_call.values())
  results = {'num_samples': num_samples, 'image_size': list(config.image_size),
             'calls': args.calls, 'wall_s_per_call': wall_s,
             'kernel_s_per_call': per_call,
             'convolution_hand_over_events_s_per_call': hand_over_s,
             'trace': path}
  common.print_table(
      f'{num_samples} samples of one {config.image_size[0]}x'
      f'{config.image_size[1]} image under the profiler: '
      f'{wall_s:.2f} s a call',
      ['kind', 's per call', 'share'],
      [[k, v, f'{100 * v / wall_s:.0f} %'] for k, v in sorted(
          per_call.items(), key=lambda kv: -kv[1])])
  common.write_results(NAME, results, machine, args.out)


if __name__ == '__main__':
  main()
