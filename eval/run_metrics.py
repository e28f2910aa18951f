r"""Offline evaluation of a trained run: metrics.json, a table and figures.

  python -m eval.run_metrics --workdir=/tmp/hpunet_lesions [--split=test] \
      [--num_samples=100] [--num_examples=200] [--overwrite] \
      [--config=experiments/synthetic_lesions.py] [--few_samples=16] \
      [--hm_iou_convention=lcm] [--ged_self_pairs] \
      [--ece_convention=sample_fraction]

Restores the newest checkpoint in `<workdir>/checkpoints` (the config saved
with it unless `--config` is given), samples with encoder-once sampling and
writes metrics.json, per_image.npz and PNG figures into a folder named by the
settings, `<workdir>/eval/<split>/step<S>_samples<N>_images<M>/` (see
`eval/outputs.py`). An existing folder is never replaced without
`--overwrite`; other settings get their own folder. A run whose training
has not finished, or stopped on a non-finite loss, is evaluated with one
warning saying so; a checkpoint holding NaN or infinite values is refused.
"""
import os
import sys

# One OpenBLAS thread (see experiments/train.py); before NumPy loads it.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from datasets import tfds_utils
from eval import evaluation
from eval import evaluator
from eval import outputs
from eval import sample_memory
import hpunet_jax
from hpunet_jax.runtime import checkpointing
from hpunet_jax.runtime import compilation_cache
from hpunet_jax.runtime import quiet_logs
from hpunet_jax.runtime import run_record

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
    'num_examples', None, 'Evaluate only the first N images of the split; '
    'default config.eval.num_examples (e.g. 200 for synthetic_lesions; the '
    'whole split where the config says None). 0 = the whole split.')
_OVERWRITE = flags.DEFINE_bool(
    'overwrite', False, 'Replace an earlier evaluation with the same step, '
    'split and settings (by default it is kept and the run refuses).')
# Protocol options of the lesion tasks (docs/lidc_protocols.md); written
# into metrics.json as `protocol`.
_FEW_SAMPLES = flags.DEFINE_integer(
    'few_samples', None, 'Samples for HM-IoU and the "few" GED^2 / diversity; '
    'default config.eval.few_samples (16).')
_HM_IOU_CONVENTION = flags.DEFINE_enum(
    'hm_iou_convention', None, ['lcm', 'repeat_gt'],
    'HM-IoU duplication: lcm (HPU-Net paper) or repeat_gt (MoSE, CAR).')
_GED_SELF_PAIRS = flags.DEFINE_bool(
    'ged_self_pairs', None, 'GED^2 / diversity within-set means include the '
    'i == j pairs (default config.eval.ged_self_pairs, True).')
_ECE_CONVENTION = flags.DEFINE_enum(
    'ece_convention', None, ['sample_fraction', 'mose', 'ssn'],
    'Lesion ECE: sample_fraction (this code, per image), mose (mean '
    'foreground softmax, pooled over the images) or ssn (mean of both '
    'classes\' ECEs per image); default config.eval.ece_convention.')


def _check_count_flags() -> None:
  """Counts are checked before the checkpoint is restored."""
  if _NUM_SAMPLES.value is not None and _NUM_SAMPLES.value < 1:
    sys.exit(f'run_metrics: --num_samples={_NUM_SAMPLES.value}: the number '
             'of samples per image must be >= 1.')
  if _NUM_EXAMPLES.value is not None and _NUM_EXAMPLES.value < 0:
    sys.exit(f'run_metrics: --num_examples={_NUM_EXAMPLES.value}: the '
             'number of images must be >= 1, or 0 for the whole split.')
  if _FEW_SAMPLES.value is not None and _FEW_SAMPLES.value < 1:
    sys.exit(f'run_metrics: --few_samples={_FEW_SAMPLES.value}: must be '
             '>= 1.')


def main(argv):
  del argv
  quiet_logs.quiet_libraries()
  _check_count_flags()
  try:
    run = hpunet_jax.load(_WORKDIR.value, config=_CONFIG.value)
  except (FileNotFoundError, checkpointing.CheckpointError) as e:
    sys.exit(f'run_metrics: {e}')
  config = run.config
  compilation_cache.enable(config.get('compilation_cache_dir', ''),
                           min_compile_time_s=0.0)
  try:
    unfinished = run_record.unfinished_note(_WORKDIR.value, run.step,
                                            config.num_train_steps)
  except ValueError as e:  # A damaged record: say so, evaluate anyway.
    unfinished = str(e)
  if unfinished:
    logging.warning('%s', unfinished)
  if _NUM_EXAMPLES.value is not None:
    config.eval.num_examples = _NUM_EXAMPLES.value or None
  for name, flag in (('few_samples', _FEW_SAMPLES),
                     ('hm_iou_convention', _HM_IOU_CONVENTION),
                     ('ged_self_pairs', _GED_SELF_PAIRS),
                     ('ece_convention', _ECE_CONVENTION)):
    if flag.value is not None:
      config.eval[name] = flag.value  # Adds it to configs saved before.
  split = _SPLIT.value or config.eval.split
  num_samples = _NUM_SAMPLES.value or config.eval.num_samples
  if not num_samples:
    sys.exit(f'run_metrics: config.eval.num_samples of {_WORKDIR.value} is '
             f'{num_samples!r} (no evaluation); pass --num_samples=N.')
  print(f'Evaluating checkpoint step {run.step} of {_WORKDIR.value} on '
        f'{config.data.name}:{split}.', flush=True)
  try:
    evaluation.evaluate(config, run.params, run.model, split, num_samples,
                        workdir=_WORKDIR.value, step=run.step,
                        existing='overwrite' if _OVERWRITE.value else 'error')
  except (outputs.ResultsExistError, evaluator.EvalSettingsError,
          sample_memory.SampleMemoryError, tfds_utils.DataSetError) as e:
    # Refused before any work: one line, no traceback.
    sys.exit(f'run_metrics: {e}')


if __name__ == '__main__':
  app.run(main)
