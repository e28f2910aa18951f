"""Sampling: N samples of one image, encoder once vs full network re-runs.

  python -m benchmarks.sampling [--quick] [--num_samples 16 100]

With the LIDC HPU-Net (128x128, one image) this times, for each N:
* `model.sample` jitted with static N (prior encoder once, decoder vmapped
  over N keys: the paper's "only the decoder needs to be rerun");
* the evaluator's `sample_labels` (encoder once, decoder mapped in chunks of
  `eval.evaluator.SAMPLE_CHUNK`, reduced to labels on the device);
* N calls of one jitted full pass (encoder + decoder per sample), the cost
  without encoder reuse;
and XLA's temporary buffer size of the compiled sampler. Parameters are the
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
                      help='timed calls per measurement (default 5, quick 2).')


def main():
  args = common.parse_args(__doc__.splitlines()[0], _extra_flags)
  num_runs = args.runs or (2 if args.quick else 5)
  sample_counts = args.num_samples or ([4, 8] if args.quick else [16, 100])
  common.enable_compilation_cache()
  machine = common.machine_info()
  config = common.experiment_config('lidc', tiny=args.quick)
  config.batch_size = 1
  model = models.make_model(config.model_type, config.model.to_dict())
  batch = common.synthetic_batch(config)
  image = batch['image']
  params = model.init(jax.random.PRNGKey(0), image, batch['segmentation'])
  rng = jax.random.PRNGKey(1)

  from eval import evaluator  # pylint: disable=g-import-not-at-top
  sample = jax.jit(model.sample, static_argnums=3)
  sample_labels = jax.jit(lambda p, r, x, n: evaluator.sample_labels(
      model, p, r, x, n), static_argnums=3)
  full_pass = jax.jit(lambda p, r, x: model.sample_full_rerun(p, r, x, 1))
  keys = list(jax.random.split(rng, max(sample_counts)))

  results, rows = {}, []
  for n in sample_counts:
    compiled = sample.lower(params, rng, image, n).compile()
    encoder_once = common.time_calls(lambda: compiled(params, rng, image),
                                     num_runs=num_runs)
    chunked = common.time_calls(lambda: sample_labels(params, rng, image, n),
                                num_runs=num_runs)
    rerun = common.time_calls(
        lambda: [full_pass(params, key, image) for key in keys[:n]],
        num_runs=num_runs)
    memory = common.compiled_memory(compiled)
    results[str(n)] = {
        'encoder_once_vmap': encoder_once.as_dict(),
        'evaluator_sample_labels_chunked': chunked.as_dict(),
        'full_rerun': rerun.as_dict(),
        'speedup_encoder_once_vs_rerun': rerun.median_s / encoder_once.median_s,
        'encoder_once_temp_mib': memory['temp_size_in_bytes'] / 2**20,
    }
    rows.append([n, encoder_once.median_s, chunked.median_s, rerun.median_s,
                 rerun.median_s / encoder_once.median_s,
                 memory['temp_size_in_bytes'] / 2**20])
  size = f'{config.image_size[0]}x{config.image_size[1]}'
  common.print_table(
      f'Sampling one {size} image, LIDC HPU-Net, '
      f'{machine["cpu_model"]}, {machine["usable_cores"]} cores, '
      f'load {machine["load_average_1_5_15"]} (median seconds)',
      ['N', 'encoder once (vmap)', 'evaluator (chunked)', 'full re-runs',
       'speed-up', 'vmap temp MiB'], rows)
  common.write_results(NAME, {
      'image_size': list(config.image_size), 'model': config.model.to_dict(),
      'num_runs': num_runs,
      'sample_chunk_of_evaluator': evaluator.SAMPLE_CHUNK,
      'by_num_samples': results}, machine, args.out)


if __name__ == '__main__':
  main()
