"""Shared pieces of the benchmarks: machine description, timing, matmul peak,
XLA options, the benchmarked configs, synthetic inputs, results files.

Timings are steady state: every function is compiled (and run once) before
it is timed, each run ends with `block_until_ready`, and the tables report
the median (and the minimum) of several runs. The machine may be shared: every
results file records the load average before and after the run.
"""
import argparse
import datetime
import glob
import gzip
import importlib
import json
import os
import platform
import re
import statistics
import tempfile
import time
from typing import (Any, Callable, Dict, Iterator, Mapping, NamedTuple,
                    Optional, Sequence, Tuple)

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from hpunet_jax.runtime import compilation_cache
from hpunet_jax.runtime import host_memory
from hpunet_jax.runtime import machine
from hpunet_jax.runtime import xla_options


RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           'results')

# The benchmarked training setups: experiment config, model variant and the
# batch size used on a CPU (the paper trains LIDC with batch 32).
TRAIN_SETUPS = {
    'lidc': dict(experiment='lidc', variant='hpunet', batch_size=8),
    'synthetic_lesions': dict(experiment='synthetic_lesions',
                              variant='hpunet', batch_size=16),
}

# Per-compilation XLA:CPU options compared by the benchmarks. jaxlib 0.10.2
# hands dots, reductions and convolutions to YNNPACK by default; 'eigen_conv'
# keeps YNNPACK for dots and reductions but runs convolutions on XLA's own
# (Eigen) kernels, which is faster for this network (docs/training.md,
# "Speed on CPU"). It gives
# the same optimised HLO as the flag
#   XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution
# but is set per `jit`/`compile`. The trainer and evaluator use the same set
# where `config.xla_cpu_eigen_conv` is on.
COMPILER_OPTIONS = {
    'default': None,
    'eigen_conv': xla_options.EIGEN_CONV,
}


def parse_args(description: str, extra: Optional[Callable] = None,
               retain_freed_memory: bool = False) -> argparse.Namespace:
  """`--quick` (a fast smoke run), `--out` (results path) and
  `--compiler_options` (which `COMPILER_OPTIONS` to compare) for every script.

  Args:
    description: the script's one-line description.
    extra: optional `fn(parser)` adding script-specific flags.
    retain_freed_memory: apply the trainer's glibc malloc settings
      (`hpunet_jax.runtime.host_memory`) first, as the train-step benchmarks
      do, so that they time what `experiments.train` runs. The sampling and
      metric benchmarks keep glibc's defaults, as `eval.run_metrics` does;
      `torch_vs_jax` decides per worker.
  """
  if retain_freed_memory:
    host_memory.retain_freed_memory()
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument('--quick', action='store_true',
                      help='small sizes and few repeats: a smoke run.')
  parser.add_argument('--out', default=None,
                      help='results JSON path (default: '
                           'benchmarks/results/<name>.json).')
  parser.add_argument('--compiler_options', nargs='+',
                      default=list(COMPILER_OPTIONS),
                      choices=list(COMPILER_OPTIONS),
                      help='XLA:CPU option sets to measure (default: all).')
  if extra is not None:
    extra(parser)
  return parser.parse_args()


def machine_info() -> Dict[str, Any]:
  """CPU model, cores, memory, JAX versions, backend and the current load."""
  device = jax.devices()[0]
  return {
      'cpu_model': machine.cpu_model(),
      'cpu_vector_features': machine.cpu_vector_features(),
      'num_cores': os.cpu_count(),
      'usable_cores': len(os.sched_getaffinity(0)),
      'memory_gib': round(os.sysconf('SC_PAGE_SIZE') *
                          os.sysconf('SC_PHYS_PAGES') / 2**30, 1),
      'python': platform.python_version(),
      'jax': jax.__version__,
      'jaxlib': jaxlib.__version__,
      'backend': jax.default_backend(),
      'device_kind': device.device_kind,
      'num_devices': jax.device_count(),
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'openblas_num_threads': os.environ.get('OPENBLAS_NUM_THREADS', ''),
      'host_memory_reuse': host_memory.current_setting(),
      'load_average_1_5_15': [round(x, 2) for x in os.getloadavg()],
      'date_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
  }


class Timing(NamedTuple):
  """Seconds per call over `len(runs_s)` timed calls."""
  median_s: float
  min_s: float
  runs_s: tuple

  def as_dict(self) -> Dict[str, Any]:
    return {'median_s': self.median_s, 'min_s': self.min_s,
            'runs_s': list(self.runs_s)}


def time_calls(fn: Callable[[], Any], num_runs: int,
               num_warmup: int = 1) -> Timing:
  """Times `fn()` (whose result is blocked on) after `num_warmup` calls."""
  if num_runs < 1:
    raise ValueError(f'num_runs must be >= 1, got {num_runs}.')
  for _ in range(num_warmup):
    jax.block_until_ready(fn())
  runs = []
  for _ in range(num_runs):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    runs.append(time.perf_counter() - start)
  return Timing(statistics.median(runs), min(runs), tuple(runs))


def matmul_peak_gflops(size: int = 2048, num_runs: int = 7) -> float:
  """Best achieved GFLOP/s of a jitted f32 `[size, size] @ [size, size]`."""
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (size, size), jnp.float32)
  matmul = jax.jit(jnp.dot)
  timing = time_calls(lambda: matmul(a, b), num_runs=num_runs, num_warmup=2)
  return 2 * size**3 / timing.min_s / 1e9


def compile_with(jitted: Callable, args: Sequence[Any], options_name: str):
  """`jitted.lower(*args).compile()` with `COMPILER_OPTIONS[options_name]`."""
  options = COMPILER_OPTIONS[options_name]
  lowered = jitted.lower(*args)
  if options is None:
    return lowered.compile()
  return lowered.compile(compiler_options=options)


def compiled_flops(compiled) -> float:
  """XLA's cost-analysis FLOP count of a compiled computation."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older JAX: one dict per device.
    analysis = analysis[0]
  return float(analysis.get('flops', float('nan')))


def compiled_memory(compiled) -> Dict[str, int]:
  """XLA's buffer sizes (bytes) of a compiled computation."""
  stats = compiled.memory_analysis()
  names = ('argument_size_in_bytes', 'output_size_in_bytes',
           'alias_size_in_bytes', 'temp_size_in_bytes',
           'generated_code_size_in_bytes')
  return {name: int(getattr(stats, name, -1)) for name in names}


def current_rss_mib() -> float:
  """Current resident set size of this process, MiB (Linux)."""
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def experiment_config(setup_name: str, tiny: bool = False,
                      batch_size: Optional[int] = None):
  """The experiment config of a `TRAIN_SETUPS` entry, with its batch size.

  Args:
    setup_name: a key of `TRAIN_SETUPS`.
    tiny: the experiment's `tiny` variant (32x32, 4 levels, batch 2), for
      smoke runs.
    batch_size: replaces the setup's (or the tiny variant's) batch size.
  """
  if setup_name not in TRAIN_SETUPS:
    raise ValueError(f'Unknown training setup {setup_name!r}; expected one '
                     f'of {sorted(TRAIN_SETUPS)}.')
  setup = TRAIN_SETUPS[setup_name]
  module = importlib.import_module(f'experiments.{setup["experiment"]}')
  if tiny:
    config = module.get_config(setup['variant'] + ',tiny')
  else:
    config = module.get_config(setup['variant'])
    config.batch_size = setup['batch_size']
  if batch_size:
    config.batch_size = batch_size
  return config


def enable_compilation_cache() -> str:
  """Uses the trainer's persistent XLA cache, so re-runs skip compiling.

  The directory is `$HPUNET_JAX_CACHE` or `~/.cache/hpunet_jax/jax` (the
  trainer's default). Reported compile times are then cache loads on re-runs.
  """
  return compilation_cache.enable()


def lesion_masks(rng: np.random.Generator, count: int, height: int,
                 width: int, max_radius: float = 12.0,
                 empty_fraction: float = 0.3) -> np.ndarray:
  """Small elliptic blobs near the centre, like LIDC lesion annotations.

  Returns:
    bool `[count, height, width]`; about `empty_fraction` of them empty.
  """
  rows = np.arange(height)[None, :, None]
  cols = np.arange(width)[None, None, :]
  centre_r = height / 2 + rng.normal(0, height / 16, (count, 1, 1))
  centre_c = width / 2 + rng.normal(0, width / 16, (count, 1, 1))
  radius_r = rng.uniform(2.0, max_radius, (count, 1, 1))
  radius_c = radius_r * rng.uniform(0.7, 1.4, (count, 1, 1))
  inside = (((rows - centre_r) / radius_r)**2 +
            ((cols - centre_c) / radius_c)**2) <= 1.0
  empty = rng.uniform(size=(count, 1, 1)) < empty_fraction
  return inside & ~empty


def synthetic_batch(config, seed: int = 0) -> Dict[str, np.ndarray]:
  """A training batch at `config.image_size`: noise images with lesions.

  The loader's real batches may be larger (the augmentation crops them to
  `image_size`); the model's cost depends only on the cropped size.
  """
  rng = np.random.default_rng(seed)
  height, width = config.image_size
  channels = config.model.num_input_channels
  segmentation = lesion_masks(rng, config.batch_size, height, width)
  image = rng.normal(0.0, 1.0, (config.batch_size, height, width, channels))
  image += 2.0 * segmentation[..., None]
  return {'image': image.astype(np.float32),
          'segmentation': segmentation.astype(np.int32),
          'mask': np.ones((config.batch_size, height, width), np.float32)}


def enable_kernel_trace_events() -> None:
  """Turns on XLA:CPU's per-kernel trace events (`jax.profiler`); must run
  before the backend starts (the flag is read then)."""
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_cpu_enable_xprof_traceme=true').strip()


def traced_events(call: Callable[[], Any], num_calls: int,
                  prefix: str) -> Tuple[list, float, str]:
  """Runs `call()` `num_calls` times under `jax.profiler.trace`.

  Returns:
    `(trace events, wall seconds per call, trace path)`; the trace is a
    Perfetto JSON in a new temporary folder named `prefix*`.
  """
  trace_dir = tempfile.mkdtemp(prefix=prefix)
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    start = time.perf_counter()
    for _ in range(num_calls):
      jax.block_until_ready(call())
    wall_s = (time.perf_counter() - start) / num_calls
  path, = glob.glob(os.path.join(trace_dir, 'plugins', 'profile', '*',
                                 'perfetto_trace.json.gz'))
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  return events, wall_s, path


def kernel_events(trace_events) -> Iterator[Tuple[str, float]]:
  """`(kernel name without its .N suffix, seconds)` of the complete
  (`ph == 'X'`) kernel events of a trace, host bookkeeping and Python frames
  left out."""
  for event in trace_events:
    if event.get('ph') != 'X' or 'dur' not in event:
      continue
    name = re.sub(r'\.\d+$', '', event['name'])
    if name.startswith(('ThunkExecutor', '$', 'Pjit', 'Common', 'Handle',
                        'end: ')):
      continue
    yield name, event['dur'] / 1e6


def time_interleaved(calls: Mapping[str, Callable[[], Any]], num_runs: int,
                     num_warmup: int = 1) -> Dict[str, Timing]:
  """Times several calls round-robin, so that a changing machine load hits
  them alike; `{name: Timing}`."""
  if num_runs < 1:
    raise ValueError(f'num_runs must be >= 1, got {num_runs}.')
  for call in calls.values():
    for _ in range(num_warmup):
      jax.block_until_ready(call())
  runs = {name: [] for name in calls}
  for _ in range(num_runs):
    for name, call in calls.items():
      start = time.perf_counter()
      jax.block_until_ready(call())
      runs[name].append(time.perf_counter() - start)
  return {name: Timing(statistics.median(r), min(r), tuple(r))
          for name, r in runs.items()}


def print_table(title: str, headers: Sequence[str],
                rows: Sequence[Sequence[Any]]) -> None:
  """Prints a plain-text table (floats with 3 significant digits)."""
  def fmt(value):
    if isinstance(value, float):
      return f'{value:.3g}'
    return str(value)
  cells = [[fmt(v) for v in row] for row in rows]
  widths = [max(len(h), *(len(r[i]) for r in cells))
            for i, h in enumerate(headers)]
  print(f'\n{title}')
  print('  '.join(h.ljust(w) for h, w in zip(headers, widths)))
  print('  '.join('-' * w for w in widths))
  for row in cells:
    print('  '.join(c.ljust(w) for c, w in zip(row, widths)))


def write_results(name: str, results: Mapping[str, Any],
                  machine_before: Mapping[str, Any],
                  out: Optional[str] = None) -> str:
  """Writes `{'benchmark', 'machine', 'load_average_after', 'results'}`.

  Args:
    name: the benchmark's name (file `benchmarks/results/<name>.json`).
    results: JSON-serialisable measurements.
    machine_before: `machine_info()` taken before the measurements.
    out: optional explicit path.

  Returns:
    The path written.
  """
  path = out or os.path.join(RESULTS_DIR, f'{name}.json')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  payload = {'benchmark': name, 'machine': dict(machine_before),
             'load_average_after': [round(x, 2) for x in os.getloadavg()],
             'results': results}
  with open(path, 'w') as f:
    json.dump(payload, f, indent=2, default=float)
  print(f'\nWrote {path}')
  return path
