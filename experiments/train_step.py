"""The pure parts of training: train state, optimiser, and the jitted step.

`experiments.train_lib` runs the loop around these; the benchmarks and tests
build the same step from here (also re-exported by `train_lib`).
"""
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import optax

from datasets import augment
from datasets import masking
from experiments import config_checks
from experiments import sharding
from hpunet_jax import models
from hpunet_jax import objective
from hpunet_jax import precision
from hpunet_jax.runtime import xla_options


class TrainState(NamedTuple):
  """Everything that changes during training (all replicated jax arrays).

  Attributes:
    step: int32 scalar, completed train steps.
    trainable: `{'model': params, 'geco': {'v': scalar}}` (no 'geco' for ELBO),
      the pytree Adam updates.
    opt_state: Adam state of `trainable`.
    geco_state: GECO moving average of the reconstruction loss.
    rng: uint32 `[2]` PRNG key for augmentation, sampling and top-k noise.
  """
  step: jax.Array
  trainable: Dict[str, Any]
  opt_state: Any
  geco_state: Any
  rng: jax.Array


def make_learning_rate_schedule(
    boundaries: Sequence[int],
    learning_rates: Sequence[float]) -> optax.Schedule:
  """Piecewise-constant learning rate: `learning_rates[i]` for steps in
  `[boundaries[i-1], boundaries[i])`.

  Args:
    boundaries: increasing step numbers at which the rate changes.
    learning_rates: `len(boundaries) + 1` rates.
  """
  boundaries, values = tuple(boundaries), tuple(learning_rates)
  if len(values) != len(boundaries) + 1:
    raise ValueError(f'optimizer.learning_rates needs len(boundaries) + 1 = '
                     f'{len(boundaries) + 1} entries, got {values}.')
  if any(b1 >= b2 for b1, b2 in zip(boundaries, boundaries[1:])):
    raise ValueError(f'optimizer.boundaries must increase: {boundaries}.')
  boundaries_array = jnp.asarray(boundaries, jnp.int32)
  values_array = jnp.asarray(values, jnp.float32)

  def schedule(step):
    return values_array[jnp.searchsorted(boundaries_array, step, side='right')]

  return schedule


def clip_gradients(
    inner: optax.GradientTransformation,
    max_norm: Optional[float]) -> optax.GradientTransformation:
  """`inner` fed gradients scaled to global norm <= `max_norm`
  (`optax.clip_by_global_norm`); `inner` itself for None.

  The clipping is stateless and its state is left out, so the optimiser
  state is `inner`'s with or without clipping: a checkpoint resumes with
  clipping turned on, off or changed.
  """
  if max_norm is None:
    return inner
  clip = optax.clip_by_global_norm(max_norm)

  def update(grads, state, params=None):
    grads, _ = clip.update(grads, clip.init(grads))
    return inner.update(grads, state, params)

  return optax.GradientTransformation(inner.init, update)


def make_optimizer(
    optimizer_config: Mapping[str, Any]
) -> Tuple[optax.GradientTransformation, optax.Schedule]:
  """Adam with the config's piecewise-constant schedule, after optional
  global-norm gradient clipping.

  Args:
    optimizer_config: `boundaries`, `learning_rates`, `b1`, `b2`, `eps`,
      `clip_global_norm` (None or absent = no clipping).

  Returns:
    `(optimizer, schedule)`.
  """
  clip_global_norm = optimizer_config.get('clip_global_norm', None)
  config_checks.check_clip_global_norm(clip_global_norm)
  schedule = make_learning_rate_schedule(optimizer_config['boundaries'],
                                         optimizer_config['learning_rates'])
  optimizer = optax.adam(schedule, b1=optimizer_config['b1'],
                         b2=optimizer_config['b2'],
                         eps=optimizer_config['eps'])
  return clip_gradients(optimizer, clip_global_norm), schedule


def count_non_finite(tree: Any) -> jax.Array:
  """int32 scalar: NaN and infinite values among the floating leaves of
  `tree`, in one reduction over their concatenation (inside a jitted step
  XLA fuses the concatenation into the reduction)."""
  leaves = [jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  if not leaves:
    return jnp.zeros((), jnp.int32)
  return jnp.sum(~jnp.isfinite(jnp.concatenate(leaves)), dtype=jnp.int32)


def init_train_state(rng: jax.Array, batch: Mapping[str, jax.Array], *,
                     model: models.Model,
                     optimizer: optax.GradientTransformation,
                     loss_config: Mapping[str, Any]) -> TrainState:
  """A fresh train state; `batch` (augmented shapes) only fixes shapes."""
  init_rng, train_rng = jax.random.split(rng)
  trainable = objective.init_trainable(model, init_rng, batch['image'],
                                       batch['segmentation'], loss_config)
  return TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable,
                    opt_state=optimizer.init(trainable),
                    geco_state=objective.init_geco_state(), rng=train_rng)


def make_train_step(*, model: models.Model,
                    optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule,
                    loss_config: Mapping[str, Any],
                    augment_config: Mapping[str, Any],
                    mesh: jax.sharding.Mesh,
                    batch_example: Mapping[str, Any],
                    eigen_conv: bool,
                    masking_config: Optional[Mapping[str, Any]] = None,
                    conv_precision: str = 'default') -> Callable:
  """The jitted, state-donating train step for `mesh`.

  Args:
    model: the model's pure functions.
    optimizer: from `make_optimizer`.
    schedule: its learning rate schedule (logged).
    loss_config: `config.loss`.
    augment_config: kwargs of `datasets.augment.augment_batch`.
    mesh: the `('data', 'spatial')` mesh.
    batch_example: a global batch (arrays or ShapeDtypeStructs) fixing the
      input shardings.
    eigen_conv: `config.xla_cpu_eigen_conv` (see `xla_options.jit_kwargs`).
    masking_config: kwargs of `datasets.masking.extrapolation_mask`, applied
      after the augmentation (extrapolation task); None = off.
    conv_precision: `config.conv_precision` (`hpunet_jax.precision`).

  Returns:
    `train_step(state, batch) -> (state, scalars)`; `scalars` holds the
    objective's scalars plus `learning_rate`, `grad_norm` (global norm of
    the gradients, before clipping) and `non_finite_state` (NaN/inf values
    in the new state's parameters, optimiser and GECO state).
  """
  loss_config, augment_config = dict(loss_config), dict(augment_config)
  masking_config = dict(masking_config) if masking_config else None
  batch_sharding = sharding.batch_shardings(mesh, batch_example)
  state_sharding = sharding.replicated(mesh)

  def train_step(state: TrainState, batch):
    rng, augment_rng, loss_rng = jax.random.split(state.rng, 3)
    batch = augment.augment_batch(augment_rng, batch, **augment_config)
    if masking_config:
      # A key derived from the augmentation's keeps unmasked runs unchanged.
      batch = masking.extrapolation_mask(jax.random.fold_in(augment_rng, 1),
                                         batch, **masking_config)
    # Keep the model's input split over batch and height whatever the
    # augmentation's gathers left behind.
    batch = jax.lax.with_sharding_constraint(
        batch, sharding.batch_shardings(mesh, batch))
    grad_fn = jax.value_and_grad(objective.loss_fn, has_aux=True)
    # The model's feature maps take their per-level shardings from the mesh
    # (`hpunet_jax.partitioning`); what `jax.set_mesh` does outside jit.
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      (_, (geco_state, scalars)), grads = grad_fn(
          state.trainable, state.geco_state, loss_rng, batch, model=model,
          loss_config=loss_config)
    updates, opt_state = optimizer.update(grads, state.opt_state,
                                          state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    trainable = objective.update_multiplier(trainable, scalars, loss_config)
    new_state = TrainState(step=state.step + 1, trainable=trainable,
                           opt_state=opt_state, geco_state=geco_state,
                           rng=rng)
    # grad_norm is before clipping; non_finite_state counts NaN/inf in what
    # a checkpoint of this step would save (the loop stops on any).
    scalars = dict(scalars, learning_rate=schedule(state.step),
                   grad_norm=optax.tree.norm(grads),
                   non_finite_state=count_non_finite(
                       (trainable, opt_state, geco_state)))
    return new_state, scalars

  def train_step_at_precision(state: TrainState, batch):
    with precision.conv_precision_context(conv_precision):
      return train_step(state, batch)

  return jax.jit(train_step_at_precision,
                 in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, state_sharding),
                 donate_argnums=(0,), **xla_options.jit_kwargs(eigen_conv))
