"""Starting a run: a fresh state, or the newest readable checkpoint.

On resume the config saved with the checkpoint is compared with this start's
(`config_checks.check_resume`, which lets through the keys the start accepts)
before its arrays are read; a damaged or non-finite newest checkpoint is
skipped with a warning and moved aside (`Checkpointer.restore_newest`).
Every start records its config (`run_record.write_config`) and drops the
`finished` and `non_finite` records of a run it is about to train on.
"""
from typing import Any, Callable, Sequence, Tuple

from absl import logging
import jax

from experiments import config_checks
from hpunet_jax.runtime import checkpointing
from hpunet_jax.runtime import run_record


def restore_or_init(checkpointer: checkpointing.Checkpointer, config,
                    init_state: Callable[[], Any],
                    abstract_state: Callable[[], Any], train_iter,
                    initial_loader_state: Any,
                    accepted_changes: Sequence[str] = ()
                    ) -> Tuple[int, Any]:
  """The start step and train state; sets `train_iter`'s position.

  Args:
    checkpointer: the run's checkpoints.
    config: this start's config.
    init_state: () -> a fresh train state.
    abstract_state: () -> its ShapeDtypeStructs (with shardings).
    train_iter: the training loader (its state is set).
    initial_loader_state: the loader's state before any batch.
    accepted_changes: config keys or subtrees allowed to differ from the
      checkpoint's (`config_checks.check_resume`).

  Raises:
    ConfigDriftError: the newest readable checkpoint was trained with
      settings that change the model, data or objective.
    NoReadableCheckpointError: every checkpoint is damaged or non-finite.
    ValueError: the checkpoint is past `config.num_train_steps`.
  """

  def restore(step):
    config_checks.check_resume(checkpointer.restore_config(step), config,
                               step, accepted_changes)
    return checkpointer.restore(step, abstract_state())

  found = checkpointer.restore_newest(restore, move_unreadable=True,
                                      skip_non_finite=True)
  if found is None:
    train_iter.set_state(initial_loader_state)
    return 0, init_state()
  start_step, (state, loader_state) = found
  if start_step > config.num_train_steps:
    raise ValueError(
        f'the checkpoint at step {start_step} in {checkpointer.directory} is '
        f'past config.num_train_steps={config.num_train_steps}.')
  logging.info('Resuming from checkpoint at step %d.', start_step)
  train_iter.set_state(loader_state)
  return start_step, state


def record_start(workdir: str, config, start_step: int) -> None:
  """Writes this start's config; forgets `finished` and `non_finite` if
  training goes on."""
  if jax.process_index() != 0:
    return
  run_record.write_config(workdir, config, start_step)
  if start_step < config.num_train_steps:
    run_record.clear_finished(workdir)
    run_record.clear_non_finite(workdir)
