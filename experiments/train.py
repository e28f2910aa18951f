r"""Trains a model: `python -m experiments.train --config=... --workdir=...`.

Examples:

  python -m experiments.train \
      --config=experiments/synthetic_lesions.py --workdir=/tmp/hpunet_lesions
  python -m experiments.train --config=experiments/lidc.py:spunet \
      --workdir=/tmp/lidc_spunet --config.num_train_steps=1000
  python -m experiments.train --config=experiments/cityscapes.py \
      --workdir=/tmp/cityscapes --config.mesh_shape='(16,2)'

Rerunning the same command continues from the last checkpoint in `workdir`.
SIGTERM makes the run save a checkpoint at the next step boundary and exit.
A NaN or infinite loss or update stops the run before that step is saved;
to continue it with other optimiser settings (a lower learning rate,
gradient clipping), rerun with them and `--accept_config_changes=optimizer`
(docs/training_failures.md):

  python -m experiments.train --config=experiments/synthetic_lesions.py \
      --workdir=/tmp/hpunet_lesions --config.optimizer.clip_global_norm=10 \
      --accept_config_changes=optimizer

Multi-process (several hosts, or several processes on one host): start one
process per host with `--num_processes=P --process_id=i
--coordinator_address=host:port`; on managed clusters (TPU pods, SLURM,
Kubernetes) `--distributed` (or `JAX_COORDINATOR_ADDRESS` in the environment)
lets `jax.distributed.initialize()` find the rest by itself.
"""
import os
import sys

# One OpenBLAS thread: a multi-threaded OpenBLAS busy-waits on a loaded CPU
# (the orthogonal initialiser's QR ran ~150x slower, benchmarks/README.md).
# Must precede NumPy's import; an explicit setting wins.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from datasets import tfds_utils
from eval import sample_memory
from experiments import config_checks
from experiments import train_lib
from hpunet_jax.runtime import checkpointing
from hpunet_jax.runtime import compilation_cache
from hpunet_jax.runtime import host_memory
from hpunet_jax.runtime import workdir_lock
from hpunet_jax.runtime import quiet_logs

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Task config file, e.g. experiments/lidc.py:hpunet.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, metrics and TensorBoard.')
_ACCEPT_CHANGES = flags.DEFINE_list(
    'accept_config_changes', [],
    'Config keys or subtrees (comma-separated, e.g. optimizer or '
    'optimizer.learning_rates,optimizer.boundaries) that may differ from the '
    "resumed checkpoint's config; other changes that alter training are "
    'refused. For continuing a run with a lower learning rate or gradient '
    'clipping after a non-finite loss.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False,
    'Call jax.distributed.initialize() with cluster auto-detection.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 (multi-process).')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Number of processes (multi-process).')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'Index of this process (multi-process).')

def _maybe_initialize_distributed() -> None:
  """Joins a multi-process run when the flags ask for one."""
  if _COORDINATOR.value or _NUM_PROCESSES.value is not None:
    jax.distributed.initialize(
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  elif _DISTRIBUTED.value or 'JAX_COORDINATOR_ADDRESS' in os.environ:
    jax.distributed.initialize()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Before JAX computes anything: each step reuses the last one's memory.
  memory_setting = host_memory.retain_freed_memory()
  config = _CONFIG.value
  quiet_logs.quiet_libraries()  # Orbax's per-save INFO lines, TFDS's.
  _maybe_initialize_distributed()
  compilation_cache.enable(config.compilation_cache_dir)
  logging.info('Process %d/%d, devices: %s; host memory reuse: %s',
               jax.process_index(), jax.process_count(), jax.devices(),
               memory_setting)
  try:
    train_lib.train_and_evaluate(config, _WORKDIR.value,
                                 _ACCEPT_CHANGES.value)
  except (workdir_lock.WorkdirError, checkpointing.CheckpointError,
          config_checks.ConfigError, tfds_utils.DataSetError,
          sample_memory.SampleMemoryError, train_lib.NonFiniteLossError) as e:
    # Expected refusals (another trainer, a file as workdir, damaged or
    # drifted checkpoints, out-of-range settings, a damaged data set, an
    # evaluation that cannot fit in memory) and the NaN stop: one line, no
    # traceback.
    sys.exit(f'train: {e}')


def parse_flags(argv):
  """absl's parser, with an unknown `--config.x=` override as one line
  naming the key and the nearest valid ones instead of three tracebacks."""
  try:
    return app.parse_flags_with_usage(argv)
  except (KeyError, AttributeError) as e:
    sys.exit(f'train: {config_checks.unknown_override(argv) or e}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main, flags_parser=parse_flags)
