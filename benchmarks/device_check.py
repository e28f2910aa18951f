"""One-shot accelerator check: the LIDC train step and sampling in float32 and
bfloat16 on whatever device JAX has (`benchmarks/device_check.sh` runs it).

  python -m benchmarks.device_check devices
  python -m benchmarks.device_check train --out train.json [--quick]
  python -m benchmarks.device_check sampling --out sampling.json [--quick]

`train` and `sampling` rewrite their JSON after every variant, so a step
stopped by its timeout keeps what it measured; `benchmarks/device_summary.py`
merges the parts. Timing follows `benchmarks/common.py`: compiled and run
before timing, `block_until_ready` on every call, median and minimum of
several calls, on random inputs.
"""
import argparse
import sys
import time
from typing import Any, Dict, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from benchmarks import common
from benchmarks import sampling
from benchmarks import train_step as benchmark_step
from benchmarks.device_summary import write_json
from experiments import sharding
from experiments import train_step
from hpunet_jax import models
from hpunet_jax import precision

# Train-step variants `dtype:conv_precision:batch`, in the order measured (a
# step stopped by its timeout keeps the first ones). Batch 32 is the paper's
# LIDC batch, 8 the CPU benchmarks'; 'highest' shows what full float32
# convolutions cost against the backend's default precision.
TRAIN_VARIANTS = ('float32:default:32', 'bfloat16:default:32',
                  'float32:default:8', 'bfloat16:default:8',
                  'float32:highest:32')
QUICK_TRAIN_VARIANTS = ('float32:default:2', 'bfloat16:default:2')
# Square matmul sizes of the device's ceilings (quick: a smoke size).
MATMUL_SIZE, QUICK_MATMUL_SIZE = 8192, 256


class TrainVariant(NamedTuple):
  """One train-step measurement: compute dtype, conv precision, batch."""
  compute_dtype: str
  conv_precision: str
  batch_size: int

  @property
  def name(self) -> str:
    return f'{self.compute_dtype}:{self.conv_precision}:{self.batch_size}'


def parse_train_variant(text: str) -> TrainVariant:
  """`'bfloat16:default:32'` -> `TrainVariant`; ArgumentTypeError naming the
  text otherwise."""
  parts = text.split(':')
  if (len(parts) != 3 or parts[0] not in precision.COMPUTE_DTYPES or
      parts[1] not in precision.CONV_PRECISIONS or not parts[2].isdigit() or
      int(parts[2]) < 1):
    raise argparse.ArgumentTypeError(
        f'train variant {text!r} is not dtype:conv_precision:batch with '
        f'dtype in {precision.COMPUTE_DTYPES}, conv_precision in '
        f'{precision.CONV_PRECISIONS} and a positive batch, e.g. '
        'bfloat16:default:32.')
  return TrainVariant(parts[0], parts[1], int(parts[2]))


def _positive_int(text: str) -> int:
  if not text.isdigit() or int(text) < 1:
    raise argparse.ArgumentTypeError(f'{text!r} is not a positive integer.')
  return int(text)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  """The subcommands `devices`, `train` and `sampling`."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  commands = parser.add_subparsers(dest='command', required=True)
  commands.add_parser('devices', help='print the JAX devices and backend.')
  for name in ('train', 'sampling'):
    sub = commands.add_parser(name, help=f'time the LIDC {name} variants.')
    sub.add_argument('--out', required=True, help='results JSON path.')
    sub.add_argument('--quick', action='store_true',
                     help="the experiment's tiny config, one timed call: "
                          'a smoke run that checks flags and JSON.')
    sub.add_argument('--runs', type=_positive_int, default=None,
                     help='timed calls per variant (default 20 train, 10 '
                          'sampling; quick 1).')
  commands.choices['train'].add_argument(
      '--variants', type=parse_train_variant, nargs='+', default=None,
      help=f'dtype:conv_precision:batch (default {" ".join(TRAIN_VARIANTS)}; '
           f'quick {" ".join(QUICK_TRAIN_VARIANTS)}).')
  sample_parser = commands.choices['sampling']
  sample_parser.add_argument('--compute_dtypes', nargs='+',
                             choices=precision.COMPUTE_DTYPES,
                             default=list(precision.COMPUTE_DTYPES))
  sample_parser.add_argument(
      '--num_samples', type=_positive_int, nargs='+', default=None,
      help='samples of one image (default 16 100; quick 2).')
  return parser.parse_args(argv)


def print_devices() -> None:
  """Prints the backend, devices and the first device's memory limit."""
  print(f'jax {jax.__version__}, backend {jax.default_backend()}')
  print(f'jax.devices(): {jax.devices()}')
  stats = jax.devices()[0].memory_stats() or {}
  if 'bytes_limit' in stats:
    print(f'device memory limit: {stats["bytes_limit"] / 2**30:.1f} GiB')


def device_info() -> Dict[str, Any]:
  """`common.machine_info()` plus the device's peak memory in use so far."""
  info = common.machine_info()
  stats = jax.devices()[0].memory_stats() or {}
  info['device_memory_limit_gib'] = stats.get('bytes_limit', 0) / 2**30
  return info


def peak_device_memory_gib() -> Optional[float]:
  """Peak bytes in use on the first device since the start (None on CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  return None if peak is None else peak / 2**30


def matmul_tflops(dtype_name: str, size: int, num_runs: int) -> float:
  """Best TFLOP/s of a jitted `[size, size] @ [size, size]` in `dtype_name`
  on random data at JAX's default precision: the device's ceiling."""
  a, b = (jax.random.normal(jax.random.PRNGKey(i), (size, size),
                            jnp.dtype(dtype_name)) for i in (0, 1))
  matmul = jax.jit(jnp.dot)
  timing = common.time_calls(lambda: matmul(a, b), num_runs, num_warmup=2)
  return 2 * size**3 / timing.min_s / 1e12


def train_variant(config, model, state, variant: TrainVariant,
                  num_runs: int) -> Dict[str, Any]:
  """Compiles and times the trainer's step for `variant`.

  Args:
    config: the LIDC experiment config (its batch size is replaced).
    model: `models.make_model`'s float32 model.
    state: an initial train state (copied: the step donates it).
    variant: dtype, conv precision and batch size.
    num_runs: timed steps.

  Returns:
    compile seconds, step timing, images/s, XLA's FLOPs and achieved
    TFLOP/s, XLA's buffer sizes, the device's peak memory so far and the
    last step's loss and non-finite count.
  """
  config.batch_size = variant.batch_size
  batch = {k: jnp.asarray(v)
           for k, v in common.synthetic_batch(config).items()}
  step = train_step.make_train_step(
      model=precision.mixed_precision_model(model, variant.compute_dtype),
      optimizer=benchmark_adam(config),
      schedule=lambda _: jnp.asarray(benchmark_step.BENCHMARK_LEARNING_RATE),
      loss_config=config.loss.to_dict(),
      augment_config=config.augment.to_dict(),
      mesh=sharding.make_mesh(config.mesh_shape), batch_example=batch,
      eigen_conv=False, conv_precision=variant.conv_precision)
  state = jax.tree.map(jnp.copy, state)
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  holder = {'state': state, 'scalars': None}

  def one_step():
    holder['state'], holder['scalars'] = compiled(holder['state'], batch)
    return holder['scalars']

  timing = common.time_calls(one_step, num_runs, num_warmup=2)
  flops = common.compiled_flops(compiled)
  scalars = holder['scalars']
  return {'compute_dtype': variant.compute_dtype,
          'conv_precision': variant.conv_precision,
          'batch_size': variant.batch_size, 'compile_s': compile_s,
          'step': timing.as_dict(),
          'images_per_s': variant.batch_size / timing.median_s,
          'gflop_per_step': flops / 1e9,
          'achieved_tflop_per_s': flops / timing.median_s / 1e12,
          'xla_memory': common.compiled_memory(compiled),
          'peak_device_memory_gib_so_far': peak_device_memory_gib(),
          'last_loss': float(scalars['loss']),
          'last_non_finite_state': int(scalars['non_finite_state'])}


def benchmark_adam(config):
  """Adam at the benchmarks' constant rate with the config's moments."""
  return optax.adam(benchmark_step.BENCHMARK_LEARNING_RATE,
                    b1=config.optimizer.b1, b2=config.optimizer.b2,
                    eps=config.optimizer.eps)


def run_train(args: argparse.Namespace) -> None:
  """Matmul ceilings, then every train variant; JSON after each."""
  variants = args.variants or [parse_train_variant(v) for v in (
      QUICK_TRAIN_VARIANTS if args.quick else TRAIN_VARIANTS)]
  num_runs = args.runs or (1 if args.quick else 20)
  size = QUICK_MATMUL_SIZE if args.quick else MATMUL_SIZE
  payload = {'benchmark': 'device_check_train', 'machine': device_info(),
             'matmul_size': size, 'num_runs': num_runs,
             'matmul_tflop_per_s': {}, 'variants': {}, 'failed': {}}
  for dtype_name in precision.COMPUTE_DTYPES:
    payload['matmul_tflop_per_s'][dtype_name] = matmul_tflops(
        dtype_name, size, num_runs=num_runs)
  config = common.experiment_config('lidc', tiny=args.quick)
  payload['image_size'] = list(config.image_size)
  payload['model'] = config.model.to_dict()
  model = models.make_model(config.model_type, config.model.to_dict())
  batch = common.synthetic_batch(config)
  # The state depends on one image's shapes only: one host-side init serves
  # every variant (the float32 parameters are cast inside bf16 steps).
  state = train_step.init_train_state(
      jax.random.PRNGKey(config.seed), {k: v[:1] for k, v in batch.items()},
      model=model, optimizer=benchmark_adam(config),
      loss_config=config.loss.to_dict())
  write_json(args.out, payload)
  for variant in variants:
    print(f'train {variant.name} ...', flush=True)
    try:
      result = train_variant(config, model, state, variant, num_runs)
    except Exception as error:  # pylint: disable=broad-except
      # One failing variant (e.g. out of memory) must not lose the others.
      payload['failed'][variant.name] = f'{type(error).__name__}: {error}'
      print(f'  failed: {payload["failed"][variant.name][:500]}', flush=True)
    else:
      payload['variants'][variant.name] = result
      print(f'  compile {result["compile_s"]:.1f} s, step '
            f'{result["step"]["median_s"] * 1e3:.2f} ms, '
            f'{result["images_per_s"]:.1f} images/s', flush=True)
    write_json(args.out, payload)


def run_sampling(args: argparse.Namespace) -> None:
  """N samples of one LIDC image per dtype: the encoder once (`model.sample`)
  against N full passes, and the evaluator's `sample_labels` in float32 (the
  evaluator restores float32 models); JSON after each count."""
  num_runs = args.runs or (1 if args.quick else 10)
  counts = args.num_samples or ([2] if args.quick else [16, 100])
  config, model, params, image = sampling.one_image_setup(args.quick)
  try:  # The evaluator needs the data stack, which the device may lack.
    from eval import evaluator  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    evaluator, evaluator_note = None, f'not timed: {error}'
  else:
    evaluator_note = 'float32 only (the evaluator restores float32 models)'
  payload = {'benchmark': 'device_check_sampling', 'machine': device_info(),
             'image_size': list(config.image_size), 'num_runs': num_runs,
             'evaluator_sample_labels': evaluator_note, 'by_dtype': {},
             'failed': {}}
  rng = jax.random.PRNGKey(1)
  keys = list(jax.random.split(rng, max(counts)))
  for dtype_name in args.compute_dtypes:
    mixed = precision.mixed_precision_model(model, dtype_name)
    payload['by_dtype'][dtype_name] = {}
    for n in counts:
      name = f'{dtype_name}:{n}'
      print(f'sampling {name} ...', flush=True)
      try:
        start = time.perf_counter()
        encoder_once = jax.jit(mixed.sample, static_argnums=3).lower(
            params, rng, image, n).compile()
        compile_s = time.perf_counter() - start
        full_pass = jax.jit(
            lambda p, r, x, m=mixed: m.sample_full_rerun(p, r, x, 1)).lower(
                params, rng, image).compile()
        calls = {'encoder_once': lambda f=encoder_once: f(params, rng, image),
                 'full_rerun': lambda f=full_pass, n=n: [
                     f(params, key, image) for key in keys[:n]]}
        if evaluator is not None and dtype_name == 'float32':
          labels = jax.jit(lambda p, r, x, n=n: evaluator.sample_labels(
              model, p, r, x, n)).lower(params, rng, image).compile()
          calls['evaluator_sample_labels'] = lambda f=labels: f(
              params, rng, image)
        timings = {kind: common.time_calls(call, num_runs, num_warmup=2)
                   for kind, call in calls.items()}
      except Exception as error:  # pylint: disable=broad-except
        payload['failed'][name] = f'{type(error).__name__}: {error}'
        print(f'  failed: {payload["failed"][name][:500]}', flush=True)
      else:
        result = {kind: t.as_dict() for kind, t in timings.items()}
        result.update(
            encoder_once_compile_s=compile_s,
            samples_per_s=n / timings['encoder_once'].median_s,
            speedup_encoder_once_vs_rerun=(
                timings['full_rerun'].median_s /
                timings['encoder_once'].median_s),
            encoder_once_xla_memory=common.compiled_memory(encoder_once))
        payload['by_dtype'][dtype_name][str(n)] = result
        print(f'  encoder once {timings["encoder_once"].median_s * 1e3:.2f} '
              f'ms, full re-runs {timings["full_rerun"].median_s * 1e3:.2f} '
              'ms', flush=True)
      write_json(args.out, payload)


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = parse_args(argv)
  if args.command == 'devices':
    print_devices()
  elif args.command == 'train':
    run_train(args)
  else:
    run_sampling(args)


if __name__ == '__main__':
  main(sys.argv[1:])
