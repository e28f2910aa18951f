"""Side by side: our trainer's step and sampler against our PyTorch HPU-Net.

One worker process per contender (`jax:<XLA options>`, `torch:eager`, and
with `--torch_compile` `torch:compile`), all pinned to the same CPUs with the
same thread count, each built on the same synthetic LIDC batch
(`common.synthetic_batch`, seed 0). Workers start one after the other and
say when they are ready (import, init, compile and one warm-up call: the
"ready" time, i.e. the time to the first step); then the driver asks them for
one timed call in turn, `--reps` rounds, so a changing load hits all alike.

Tasks: a train step at each `--batch_sizes` (JAX: `experiments.train_lib.
make_train_step` as `benchmarks/train_step.py` builds it, which includes the
on-device augmentation; torch: forward, GECO loss with stochastic top-k,
backward, Adam) and sampling `--num_samples` of one image (both encoder once,
decoders in chunks of 16). Writes `benchmarks/results/torch_vs_jax.json`.

  python -m benchmarks.torch_vs_jax            # full (benchmarks/README.md)
  python -m benchmarks.torch_vs_jax --quick    # tiny model, smoke run
  python -m benchmarks.torch_vs_jax --baseline_tree /tmp/before  # + before

Needs `torch` (an optional extra, benchmarks/README.md); the JAX side alone
runs without it with `--contenders jax`.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from hpunet_jax.runtime import host_memory

NAME = 'torch_vs_jax'


def _extra_flags(parser):
  parser.add_argument('--batch_sizes', type=int, nargs='+', default=None,
                      help='train batch sizes (default 8 32; quick 2).')
  parser.add_argument('--num_samples', type=int, nargs='+', default=None,
                      help='sample counts (default 16 100; quick 4).')
  parser.add_argument('--reps', type=int, default=None,
                      help='timed rounds per task (default 5, quick 2).')
  parser.add_argument('--threads', type=int, default=None,
                      help='CPUs (and torch threads) per worker '
                           '(default: all usable).')
  parser.add_argument('--contenders', nargs='+', default=['jax', 'torch'],
                      choices=['jax', 'torch'])
  parser.add_argument('--torch_compile', action='store_true',
                      help='also time torch.compile (slow to compile).')
  parser.add_argument('--torch_retain_memory', action='store_true',
                      help='also time torch eager with the glibc malloc '
                           "settings experiments.train uses (`torch:"
                           "eager_retain`; hpunet_jax/runtime/host_memory.py).")
  parser.add_argument('--cold', action='store_true',
                      help='JAX workers use an empty compilation cache.')
  parser.add_argument('--baseline_tree', default=None,
                      help='a checkout of an earlier commit (e.g. `git '
                           'worktree add /tmp/before <commit>`): adds its JAX '
                           'workers as `before:<XLA options>` contenders, for '
                           'before/after figures from one interleaved run.')
  parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
  parser.add_argument('--task', default=None, help=argparse.SUPPRESS)


def _pin(threads: int) -> None:
  """Both frameworks on the first `threads` usable CPUs."""
  cpus = sorted(os.sched_getaffinity(0))[:threads]
  os.sched_setaffinity(0, cpus)


def _config(quick: bool, batch_size: int):
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  config = common.experiment_config('lidc', tiny=quick)
  config.batch_size = batch_size
  return config


def _jax_worker(options: str, kind: str, size: int, quick: bool):
  """`(call, num_params)` for the JAX side."""
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  from hpunet_jax import models  # pylint: disable=g-import-not-at-top
  common.enable_compilation_cache()
  if kind == 'train':
    config = _config(quick, size)
    setup = train_step.build_train_steps(config, 'trainer', (options,))[options]
    call = train_step.train_step_caller(setup)
    params = setup.state.trainable['model']
  else:
    config = _config(quick, 1)
    model = models.make_model(config.model_type, config.model.to_dict())
    batch = common.synthetic_batch(config)
    params = model.init(jax.random.PRNGKey(0), batch['image'],
                        batch['segmentation'])
    rng = jax.random.PRNGKey(1)
    image = jax.numpy.asarray(batch['image'])
    sample = common.compile_with(jax.jit(model.sample, static_argnums=3),
                                 (params, rng, image, size), options)
    call = lambda: sample(params, rng, image)
  num_params = sum(x.size for x in jax.tree.leaves(params))
  return lambda: jax.block_until_ready(call()), num_params


def _torch_worker(mode: str, kind: str, size: int, quick: bool,
                  threads: int):
  """`(call, num_params)` for the PyTorch side."""
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  config = _config(quick, size if kind == 'train' else 1)
  kwargs = config.model.to_dict()
  if kwargs.pop('num_prior_only_channels', 0):
    raise ValueError('The torch reference has no prior-only channels.')
  net = torch_reference.HierarchicalProbUNet(**kwargs)
  batch = common.synthetic_batch(config)
  image = torch.from_numpy(batch['image']).permute(0, 3, 1, 2).contiguous()
  segmentation = torch.from_numpy(batch['segmentation']).long()
  num_params = sum(p.numel() for p in net.parameters())
  if kind == 'train':
    from benchmarks import train_step  # pylint: disable=g-import-not-at-top
    step = torch_reference.make_train_step(
        net, config.loss.to_dict(), train_step.BENCHMARK_LEARNING_RATE,
        config.optimizer.b1, config.optimizer.b2, config.optimizer.eps)
    if mode == 'compile':
      step = torch.compile(step)  # 'eager' and 'eager_retain' stay eager.
    return lambda: step(image, segmentation), num_params
  sample = net.sample
  if mode == 'compile':
    sample = torch.compile(sample)
  return lambda: sample(image[:1], size), num_params


def worker_main(args) -> None:
  """Builds one contender, warms it up, then times a call per 'run' line.

  JAX train workers reuse freed memory as `experiments.train` does
  (`host_memory.retain_freed_memory`); JAX samplers keep glibc's defaults, as
  `eval.run_metrics` does; torch workers keep them too, as a PyTorch user
  gets them, except `torch:eager_retain`.
  """
  framework, mode = args.worker.split(':')
  kind, size = args.task.split(':')
  if (framework == 'jax' and kind == 'train') or mode.endswith('_retain'):
    host_memory.retain_freed_memory()  # Before the framework computes.
  _pin(args.threads)
  if framework == 'jax':
    call, num_params = _jax_worker(mode, kind, int(size), args.quick)
  else:
    call, num_params = _torch_worker(mode, kind, int(size), args.quick,
                                     args.threads)
  call()  # Warm-up (the first step).
  print(json.dumps({'ready': True, 'num_params': int(num_params),
                    'host_memory_reuse': host_memory.current_setting()}),
        flush=True)
  for line in sys.stdin:
    if line.strip() != 'run':
      break
    start = time.perf_counter()
    call()
    print(json.dumps({'s': time.perf_counter() - start}), flush=True)


_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _start(contender, task, args, env):
  """Starts one worker (a `before:` contender runs the baseline tree's code
  as `jax:`) and waits until it is ready."""
  tree, worker = _REPO, contender
  if contender.startswith('before:'):
    tree, worker = args.baseline_tree, 'jax:' + contender.split(':')[1]
    env = dict(env, PYTHONPATH=tree)
  command = [sys.executable, '-m', 'benchmarks.torch_vs_jax',
             '--worker', worker, '--task', task,
             '--threads', str(args.threads)] + (['--quick'] if args.quick
                                                else [])
  start = time.perf_counter()
  proc = subprocess.Popen(command, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True, env=env,
                          cwd=tree)
  reply = proc.stdout.readline()
  if not reply:
    raise RuntimeError(f'worker {contender} {task} died before it was ready '
                       f'(exit code {proc.wait()}); see its stderr above.')
  return proc, dict(json.loads(reply), ready_s=time.perf_counter() - start)


def _ask(proc) -> float:
  proc.stdin.write('run\n')
  proc.stdin.flush()
  return json.loads(proc.stdout.readline())['s']


def _contenders(args):
  out = []
  if args.baseline_tree:
    out += [f'before:{o}' for o in args.compiler_options]
  if 'jax' in args.contenders:
    out += [f'jax:{o}' for o in args.compiler_options]
  if 'torch' in args.contenders:
    out += ['torch:eager'] + (['torch:compile'] if args.torch_compile else [])
    out += ['torch:eager_retain'] if args.torch_retain_memory else []
  return out


def run_task(task, contenders, args, env):
  """One task, all contenders interleaved: `{contender: stats}`."""
  procs, stats = {}, {}
  try:
    for contender in contenders:  # One at a time: ready times uncontended.
      procs[contender], stats[contender] = _start(contender, task, args, env)
    runs = {c: [] for c in contenders}
    for _ in range(args.reps):
      for contender in contenders:
        runs[contender].append(_ask(procs[contender]))
  finally:
    for proc in procs.values():
      proc.stdin.close()
      proc.wait()
  for contender, seconds in runs.items():
    stats[contender].update(median_s=statistics.median(seconds),
                            min_s=min(seconds), runs_s=seconds)
  return stats


def main():
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  args = common.parse_args(__doc__.splitlines()[0], _extra_flags,
                           retain_freed_memory=False)
  args.threads = args.threads or len(os.sched_getaffinity(0))
  if args.worker:
    worker_main(args)
    return
  args.reps = args.reps or (2 if args.quick else 5)
  if args.baseline_tree and not os.path.isfile(os.path.join(
      args.baseline_tree, 'benchmarks', 'torch_vs_jax.py')):
    raise SystemExit(f'--baseline_tree {args.baseline_tree!r} is not a '
                     'checkout of this repository (no '
                     'benchmarks/torch_vs_jax.py in it).')
  batch_sizes = args.batch_sizes or ([2] if args.quick else [8, 32])
  sample_counts = args.num_samples or ([4] if args.quick else [16, 100])
  env = dict(os.environ, OPENBLAS_NUM_THREADS='1')
  if args.cold:
    env['HPUNET_JAX_CACHE'] = tempfile.mkdtemp(prefix='jax_cache_cold_')
  machine = common.machine_info()
  contenders = _contenders(args)
  tasks = ([f'train:{b}' for b in batch_sizes] +
           [f'sample:{n}' for n in sample_counts])
  results, rows = {}, []
  for task in tasks:
    stats = run_task(task, contenders, args, env)
    kind, size = task.split(':')
    for contender, s in stats.items():
      if kind == 'train':
        s['images_per_s'] = int(size) / s['median_s']
      rows.append([task, contender, s['num_params'], s['ready_s'],
                   s['median_s'], s['min_s']])
    if 'torch:eager' in stats:
      for contender, s in stats.items():
        s['speedup_vs_torch_eager'] = (stats['torch:eager']['median_s'] /
                                       s['median_s'])
    results[task] = stats
  config = _config(args.quick, 1)
  common.print_table(
      f'Torch vs JAX, LIDC HPU-Net {config.image_size}, {args.threads} '
      f'threads, {machine["cpu_model"]} (seconds; ready = start to first call)',
      ['task', 'contender', 'params', 'ready', 'median', 'min'], rows)
  common.write_results(NAME, {
      'image_size': list(config.image_size), 'model': config.model.to_dict(),
      'threads': args.threads, 'reps': args.reps, 'cold_cache': args.cold,
      # The JAX workers' XLA cache: rerun with HPUNET_JAX_CACHE set to it for
      # the warm time to the first call.
      'compilation_cache_dir': env.get('HPUNET_JAX_CACHE'),
      'compiler_options': {k: common.COMPILER_OPTIONS[k]
                           for k in args.compiler_options},
      'baseline_tree': _baseline(args.baseline_tree),
      'torch_version': _torch_version(), 'tasks': results}, machine, args.out)


def _baseline(tree):
  """The baseline tree's path and commit (None without a baseline)."""
  if not tree:
    return None
  commit = subprocess.run(['git', '-C', tree, 'rev-parse', 'HEAD'],
                          capture_output=True, text=True).stdout.strip()
  return {'path': os.path.abspath(tree), 'commit': commit or None}


def _torch_version():
  try:
    import torch  # pylint: disable=g-import-not-at-top
    return torch.__version__
  except ImportError:
    return None


if __name__ == '__main__':
  main()
