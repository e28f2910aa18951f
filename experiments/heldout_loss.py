"""The held-out loss of a run's last two checkpoints: how an ELBO run is
judged converged (`experiments.convergence.heldout_plateau`).

Both checkpoints are scored on the same batches (`config.convergence`:
`heldout_examples` images of `heldout_split`, read as the trainer reads
its split, without augmentation) with the same key for the posterior
sample, so the difference is the model's change, not the batches'.
"""
import math
import os
from typing import Any, Callable, List, Mapping, Optional, Tuple

import jax
import ml_collections
import numpy as np

from datasets import pipeline
from hpunet_jax import models
from hpunet_jax import objective
from hpunet_jax import precision
from hpunet_jax import trained_run
from hpunet_jax.runtime import checkpointing

# The key of every held-out batch's posterior sample (folded with its index).
HELDOUT_SEED = 0


def heldout_batches(config: ml_collections.ConfigDict
                    ) -> List[Mapping[str, np.ndarray]]:
  """`ceil(heldout_examples / batch_size)` batches of `heldout_split`, as
  the trainer's iterator gives them (`image [B, H, W, C]`, `segmentation
  [B, H, W]`, `mask [B, H, W]`), in an order fixed by `config.seed`."""
  data_config = ml_collections.ConfigDict(config.data.to_dict())
  data_config.train_split = config.convergence.heldout_split
  batch_size = config.batch_size
  count = math.ceil(config.convergence.heldout_examples / batch_size)
  iterator = pipeline.make_train_iterator(data_config, batch_size=batch_size,
                                          seed=config.seed)
  return [next(iterator) for _ in range(count)]


def loss_function(config: ml_collections.ConfigDict, model: models.Model
                  ) -> Callable[[Any, Mapping[str, np.ndarray], jax.Array],
                                jax.Array]:
  """The jitted training objective of one batch, `(params, batch, rng) ->
  loss` (`objective.loss_fn` at the run's conv precision); built once and
  used for both checkpoints, so it compiles once."""
  loss_config = config.loss.to_dict()
  geco_state = objective.init_geco_state()  # The ELBO does not read it.

  @jax.jit
  def batch_loss(params, batch, rng):
    with precision.conv_precision_context(config.conv_precision):
      _, (_, scalars) = objective.loss_fn(
          {'model': params}, geco_state, rng, batch, model=model,
          loss_config=loss_config)
    return scalars['loss']

  return batch_loss


def mean_loss(batch_loss: Callable, params: Any,
              batches: List[Mapping[str, np.ndarray]]) -> float:
  """`batch_loss` (`loss_function`) of `params` averaged over `batches`,
  batch `i` with the key `fold_in(PRNGKey(HELDOUT_SEED), i)`."""
  key = jax.random.PRNGKey(HELDOUT_SEED)
  losses = [float(batch_loss(params, batch, jax.random.fold_in(key, index)))
            for index, batch in enumerate(batches)]
  return sum(losses) / len(losses)


def checkpoint_losses(config: ml_collections.ConfigDict, workdir: str
                      ) -> Optional[Tuple[int, float, float]]:
  """`(step_before, loss_before, loss_last)`: the held-out loss of the
  checkpoint of `config.num_train_steps` and of the newest kept one before
  it; None when either is missing."""
  directory = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
  if not os.path.isdir(directory):
    return None
  checkpointer = checkpointing.Checkpointer(os.path.abspath(directory),
                                            use_async=False)
  try:
    steps = checkpointer.all_steps()
  finally:
    checkpointer.close()
  last_step = int(config.num_train_steps)
  before = [step for step in steps if step < last_step]
  if last_step not in steps or not before:
    return None
  model = precision.mixed_precision_model(
      models.make_model(config.model_type, config.model.to_dict()),
      config.compute_dtype)
  batch_loss = loss_function(config, model)
  batches = heldout_batches(config)
  losses = [mean_loss(batch_loss,
                      trained_run.load(workdir, step, config).params, batches)
            for step in (max(before), last_step)]
  return max(before), losses[0], losses[1]
