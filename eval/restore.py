"""Loads a trained model from a workdir for offline evaluation and predict.

Orbax's INFO lines about the restore are dropped (`quiet_logs`); its
warnings and errors stay.
"""
import os
from typing import Any, NamedTuple, Optional

from absl import logging
import ml_collections

from hpunet_jax.runtime import checkpointing
from hpunet_jax.runtime import quiet_logs
from hpunet_jax import models


# sPU-Net fields that configs saved before the fields existed lack, with the values
# that reproduce the code that wrote them: orthogonal kernels (blocks.conv's)
# and nearest-neighbour up-sampling (blocks.resize_up).
SPUNET_LEGACY_FIELDS = {'weight_init': 'orthogonal',
                                'up_sampling': 'nearest'}


def fill_old_spunet_fields(config: ml_collections.ConfigDict,
                           source: str) -> None:
  """Adds `SPUNET_LEGACY_FIELDS` missing from an sPU-Net `config`
  (in place), with one log line naming `source` (the checkpoint)."""
  if config.get('model_type') != 'spunet':
    return
  missing = {key: value for key, value in SPUNET_LEGACY_FIELDS.items()
             if key not in config.model}
  if not missing:
    return
  logging.warning(
      '%s: the saved sPU-Net config predates model.%s; using %s, the code '
      'that wrote it.', source, ' and model.'.join(missing),
      ', '.join(f'{key}={value!r}' for key, value in missing.items()))
  with config.unlocked():
    config.model.update(missing)


class Restored(NamedTuple):
  config: ml_collections.ConfigDict
  model: models.Model
  params: Any
  step: int


def restore_latest(workdir: str,
                   config: Optional[ml_collections.ConfigDict] = None,
                   step: Optional[int] = None) -> Restored:
  """The model parameters of the newest (or a given) checkpoint.

  Args:
    workdir: the training run's directory (holds `checkpoints/`).
    config: the run's config; None = the config saved with the checkpoint
      (an sPU-Net's saved before those fields existed gets the fields it lacks,
      `fill_old_spunet_fields`).
    step: which checkpoint; None = the newest.

  Raises:
    FileNotFoundError: no checkpoint in `<workdir>/checkpoints`.
    CheckpointError: every checkpoint is damaged.
  """
  quiet_logs.quiet_libraries()
  directory = os.path.abspath(os.path.join(workdir,
                                           checkpointing.CHECKPOINT_DIR))
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'No checkpoints in {directory}: train first, or '
                            'pass the --workdir of a training run.')
  checkpointer = checkpointing.Checkpointer(directory, use_async=False)

  def restore(at_step):
    saved_config = (checkpointer.restore_config(at_step) if config is None
                    else None)
    return checkpointer.restore_saved_state(at_step), saved_config

  try:
    if step is None:  # The newest that reads (damaged ones left in place).
      found = checkpointer.restore_newest(restore, move_unreadable=False)
      if found is None:
        raise FileNotFoundError(f'No complete checkpoint in {directory}.')
      step, (state, saved_config) = found
    else:
      state, saved_config = restore(step)
    if config is None:
      config = ml_collections.ConfigDict(saved_config)
      fill_old_spunet_fields(config, os.path.join(directory, str(step)))
  finally:
    checkpointer.close()
  trainable = state['trainable'] if isinstance(state, dict) else state[1]
  model = models.make_model(config.model_type, config.model.to_dict())
  return Restored(config, model, trainable['model'], int(step))
