r"""Offline evaluation of a trained run: metrics.json, a table and figures.

  python -m eval.run_metrics --workdir=/tmp/lesions [--split=test] \
      [--num_samples=100] [--config=experiments/synthetic_lesions.py]

Restores the newest checkpoint in `<workdir>/checkpoints` (the config saved
with it unless `--config` is given), samples with encoder-once sampling and
writes `<workdir>/eval/<split>/metrics.json` plus PNG figures next to it.
"""
import os
import sys

# One OpenBLAS thread (see experiments/train.py); before NumPy loads it.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

from absl import app
from absl import flags
from ml_collections import config_flags

from eval import evaluator
from eval import restore

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Task config; default: the one saved with the run.',
    lock_config=False)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Training run directory.',
                               required=True)
_SPLIT = flags.DEFINE_string('split', None, 'Split; default config.eval.split.')
_NUM_SAMPLES = flags.DEFINE_integer(
    'num_samples', None, 'Largest number of samples per image (GED at 16 '
    'and at this many); default config.eval.num_samples.')
_NUM_EXAMPLES = flags.DEFINE_integer(
    'num_examples', None, 'Evaluate only the first N images of the split.')


def main(argv):
  del argv
  try:
    run = restore.restore_latest(_WORKDIR.value, _CONFIG.value)
  except FileNotFoundError as e:
    sys.exit(f'run_metrics: {e}')
  config = run.config
  if _NUM_EXAMPLES.value is not None:
    config.eval.num_examples = _NUM_EXAMPLES.value
  split = _SPLIT.value or config.eval.split
  print(f'Evaluating checkpoint step {run.step} of {_WORKDIR.value} on '
        f'{config.data.name}:{split}.')
  evaluator.evaluate(config, run.params, run.model, split,
                     _NUM_SAMPLES.value or config.eval.num_samples,
                     workdir=_WORKDIR.value, checkpoint_step=run.step)


if __name__ == '__main__':
  app.run(main)
