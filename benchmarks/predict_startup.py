"""Wall time of `python -m experiments.predict` on one image, whole process.

  python -m benchmarks.predict_startup --workdir=/tmp/hpunet_lesions [--runs 3] \
      [--baseline_tree DIR]

Writes a random grey image of the run's `config.image_size` into a temporary
folder and runs the command line `--runs + 1` times (16 samples, a new output
folder each time): the first run fills the compilation cache (reported, not
counted), the others are warm starts. Each is a fresh Python process, so the
time includes imports, restoring the checkpoint, tracing and loading the
sampler, sampling and writing the figures: what a user waits for.
`--baseline_tree` (another checkout, e.g. `git worktree add /tmp/before
<commit>`) runs its `experiments.predict` too, alternating with this one.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from benchmarks import common
from hpunet_jax.runtime import run_record

NAME = 'predict_startup'
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _extra_flags(parser):
  parser.add_argument('--workdir', required=True,
                      help='a training run (holds checkpoints/).')
  parser.add_argument('--runs', type=int, default=3,
                      help='warm runs timed (default 3).')
  parser.add_argument('--num_samples', type=int, default=16)
  parser.add_argument('--baseline_tree', default=None,
                      help='another checkout whose predict is timed too.')


def run_once(tree: str, workdir: str, image: str, out: str,
             num_samples: int) -> float:
  """Seconds of one `experiments.predict` process of the checkout `tree`;
  raises if it fails."""
  start = time.perf_counter()
  done = subprocess.run(
      [sys.executable, '-m', 'experiments.predict', f'--workdir={workdir}',
       f'--image={image}', f'--out={out}', f'--num_samples={num_samples}'],
      cwd=tree, capture_output=True, text=True, check=False)
  seconds = time.perf_counter() - start
  if done.returncode != 0:
    raise RuntimeError(f'predict failed: {done.stderr.strip()[-1000:]}')
  return seconds


def main():
  args = common.parse_args(__doc__.splitlines()[0], _extra_flags)
  if args.runs < 1:
    raise SystemExit(f'--runs must be >= 1, got {args.runs}.')
  machine = common.machine_info()
  config_path = os.path.join(args.workdir, run_record.CONFIG_FILE)
  if not os.path.exists(config_path):
    raise SystemExit(f'{config_path} not found: pass a training run.')
  with open(config_path) as f:
    height, width = json.load(f)['image_size']
  scratch = tempfile.mkdtemp(prefix='predict_startup_')
  image = os.path.join(scratch, 'scan.png')
  Image.fromarray(np.random.default_rng(0).integers(
      0, 256, (height, width), dtype=np.uint8)).save(image)
  trees = {'this': _REPO}
  if args.baseline_tree:
    trees['baseline'] = os.path.abspath(args.baseline_tree)
  times = {name: [] for name in trees}
  for i in range(args.runs + 1):
    for name, tree in trees.items():
      times[name].append(run_once(
          tree, args.workdir, image, os.path.join(scratch, f'{name}{i}'),
          args.num_samples))
  results = {'workdir': os.path.abspath(args.workdir),
             'image_size': [height, width], 'num_samples': args.num_samples,
             'trees': trees,
             'first_run_s': {k: v[0] for k, v in times.items()},
             'warm_runs_s': {k: v[1:] for k, v in times.items()},
             'warm_median_s': {k: statistics.median(v[1:])
                               for k, v in times.items()}}
  common.print_table(
      f'experiments.predict, one {height}x{width} image, {args.num_samples} '
      'samples (seconds, whole process)',
      ['tree', 'first (fills the cache)', 'warm median', 'warm runs'],
      [[name, v[0], statistics.median(v[1:]),
        ' '.join(f'{t:.2f}' for t in v[1:])] for name, v in times.items()])
  common.write_results(NAME, results, machine, args.out)


if __name__ == '__main__':
  main()
