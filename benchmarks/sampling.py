"""Sampling: N samples of one image, encoder once vs full network re-runs.

  python -m benchmarks.sampling [--quick] [--num_samples 16 100]

With the LIDC HPU-Net (128x128, one image) this times, for each N:
* `model.sample` jitted with static N (prior encoder once, decoder mapped
  over N keys in vmapped chunks of `models.SAMPLE_CHUNK`: the paper's "only
  the decoder needs to be rerun");
* the evaluator's `sample_labels` (encoder once, decoder mapped in chunks of
  `eval.evaluator.SAMPLE_CHUNK`, reduced to labels on the device);
* N calls of one jitted full pass (encoder + decoder per sample), the cost
  without encoder reuse;
and XLA's temporary buffer size of the compiled sampler, for each XLA option
set of `common.COMPILER_OPTIONS`, all timed round-robin. Parameters are the
random initial ones: the cost does not depend on their values.
"""
import jax

from benchmarks import common
from hpunet_jax import models

NAME = 'sampling'


def _extra_flags(parser):
  parser.add_argument('--num_samples', type=int, nargs='+', default=None,
                      help='sample counts (default 16 100; quick 4 8).')
  parser.add_argument('--runs', type=int, default=None,
                      help='timed calls per measurement (default 3, quick 2).')


def one_image_setup(quick: bool):
  """The LIDC HPU-Net (its tiny config if `quick`), one synthetic image
  `[1, H, W, 1]` and the model's random initial parameters (the cost does not
  depend on their values): `(config, model, params, image)`."""
  config = common.experiment_config('lidc', tiny=quick)
  config.batch_size = 1
  model = models.make_model(config.model_type, config.model.to_dict())
  batch = common.synthetic_batch(config)
  params = model.init(jax.random.PRNGKey(0), batch['image'],
                      batch['segmentation'])
  return config, model, params, batch['image']


def main():
  args = common.parse_args(__doc__.splitlines()[0], _extra_flags)
  num_runs = args.runs or (2 if args.quick else 3)
  sample_counts = args.num_samples or ([4, 8] if args.quick else [16, 100])
  common.enable_compilation_cache()
  machine = common.machine_info()
  config, model, params, image = one_image_setup(args.quick)
  rng = jax.random.PRNGKey(1)
  keys = list(jax.random.split(rng, max(sample_counts)))

  from eval import evaluator  # pylint: disable=g-import-not-at-top
  sample = jax.jit(model.sample, static_argnums=3)
  full_pass = jax.jit(lambda p, r, x: model.sample_full_rerun(p, r, x, 1))
  results, rows = {}, []
  for n in sample_counts:
    sample_labels = jax.jit(lambda p, r, x, n=n: evaluator.sample_labels(
        model, p, r, x, n))
    calls, temp_mib = {}, {}
    for options in args.compiler_options:
      encoder_once = common.compile_with(sample, (params, rng, image, n),
                                         options)
      chunked = common.compile_with(sample_labels, (params, rng, image),
                                    options)
      one_pass = common.compile_with(full_pass, (params, rng, image), options)
      temp_mib[options] = common.compiled_memory(
          encoder_once)['temp_size_in_bytes'] / 2**20
      calls[(options, 'encoder_once_vmap')] = (
          lambda f=encoder_once: f(params, rng, image))
      calls[(options, 'evaluator_sample_labels_chunked')] = (
          lambda f=chunked: f(params, rng, image))
      calls[(options, 'full_rerun')] = (
          lambda f=one_pass, n=n: [f(params, key, image) for key in keys[:n]])
    timings = common.time_interleaved(calls, num_runs=num_runs)
    results[str(n)] = {}
    for options in args.compiler_options:
      timing = {kind: timings[(options, kind)]
                for kind in ('encoder_once_vmap',
                             'evaluator_sample_labels_chunked', 'full_rerun')}
      speedup = (timing['full_rerun'].median_s /
                 timing['encoder_once_vmap'].median_s)
      results[str(n)][options] = dict(
          {kind: t.as_dict() for kind, t in timing.items()},
          speedup_encoder_once_vs_rerun=speedup,
          encoder_once_temp_mib=temp_mib[options])
      rows.append([n, options, timing['encoder_once_vmap'].median_s,
                   timing['evaluator_sample_labels_chunked'].median_s,
                   timing['full_rerun'].median_s, speedup, temp_mib[options]])
  size = f'{config.image_size[0]}x{config.image_size[1]}'
  common.print_table(
      f'Sampling one {size} image, LIDC HPU-Net, '
      f'{machine["cpu_model"]}, {machine["usable_cores"]} cores, '
      f'load {machine["load_average_1_5_15"]} (median seconds)',
      ['N', 'XLA options', 'encoder once (vmap)', 'evaluator (chunked)',
       'full re-runs', 'speed-up', 'vmap temp MiB'], rows)
  common.write_results(NAME, {
      'image_size': list(config.image_size), 'model': config.model.to_dict(),
      'num_runs': num_runs,
      'sample_chunk_of_evaluator': evaluator.SAMPLE_CHUNK,
      'compiler_options': {k: common.COMPILER_OPTIONS[k]
                           for k in args.compiler_options},
      'by_num_samples': results}, machine, args.out)


if __name__ == '__main__':
  main()
