"""The train step the benchmarks time, built like the trainer builds it.

`build_train_steps` compiles `experiments.train_step.make_train_step` (or, with
`step_source='composed'`, the same computation composed here) on a synthetic
batch, once per XLA option set of `common.COMPILER_OPTIONS`.
"""
import time
from typing import Any, Callable, Dict, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from benchmarks import common
from hpunet_jax import models

# Learning rate of the benchmarked Adam; the value does not change the cost.
BENCHMARK_LEARNING_RATE = 1e-4


class TrainStepSetup(NamedTuple):
  """A compiled train step and what it runs on.

  Attributes:
    step: `step(state, batch) -> (state, scalars)`, compiled, state donated.
    state: the initial train state.
    batch: the input batch (device arrays).
    source: which code built the step.
    compile_s: lowering + compilation time.
    flops: XLA's FLOP count of one step.
    memory: XLA's buffer sizes of the step (`compiled_memory`).
  """
  step: Callable
  state: Any
  batch: Mapping[str, jax.Array]
  source: str
  compile_s: float
  flops: float
  memory: Dict[str, int]


def _adam(config) -> optax.GradientTransformation:
  return optax.adam(BENCHMARK_LEARNING_RATE, b1=config.optimizer.b1,
                    b2=config.optimizer.b2, eps=config.optimizer.eps)


def _trainer_step(config, model, batch):
  """The trainer's own step: `experiments.train_step.make_train_step`."""
  from experiments import sharding  # pylint: disable=g-import-not-at-top
  from experiments import train_step  # pylint: disable=g-import-not-at-top
  optimizer = _adam(config)
  mesh = sharding.make_mesh(config.mesh_shape)
  step = train_step.make_train_step(
      model=model, optimizer=optimizer,
      schedule=lambda step: jnp.asarray(BENCHMARK_LEARNING_RATE),
      loss_config=config.loss.to_dict(),
      augment_config=config.augment.to_dict(), mesh=mesh,
      batch_example=batch,
      eigen_conv=False)  # The options are compared at compile time.
  # `model.init` draws on the host (hpunet_jax/initialisation.py): no jit.
  state = train_step.init_train_state(
      jax.random.PRNGKey(config.seed), {k: v[:1] for k, v in batch.items()},
      model=model, optimizer=optimizer, loss_config=config.loss.to_dict())
  return step, state


def _composed_step(config, model, batch):
  """The same computation composed here: augmentation, `objective.loss_fn`,
  Adam, one jit with the state donated (no mesh)."""
  from datasets import augment  # pylint: disable=g-import-not-at-top
  from hpunet_jax import objective  # pylint: disable=g-import-not-at-top
  optimizer = _adam(config)
  loss_config = config.loss.to_dict()
  augment_config = config.augment.to_dict()

  def step(state, batch):
    rng, augment_rng, loss_rng = jax.random.split(state['rng'], 3)
    batch = augment.augment_batch(augment_rng, batch, **augment_config)
    (_, (geco_state, scalars)), grads = jax.value_and_grad(
        objective.loss_fn, has_aux=True)(
            state['trainable'], state['geco_state'], loss_rng, batch,
            model=model, loss_config=loss_config)
    updates, opt_state = optimizer.update(grads, state['opt_state'],
                                          state['trainable'])
    trainable = optax.apply_updates(state['trainable'], updates)
    return dict(trainable=trainable, opt_state=opt_state,
                geco_state=geco_state, rng=rng), scalars

  def init(rng):
    init_rng, rng = jax.random.split(rng)
    trainable = objective.init_trainable(
        model, init_rng, batch['image'][:1], batch['segmentation'][:1],
        loss_config)
    return dict(trainable=trainable, opt_state=optimizer.init(trainable),
                geco_state=objective.init_geco_state(), rng=rng)

  state = init(jax.random.PRNGKey(config.seed))  # Not jitted, see above.
  return jax.jit(step, donate_argnums=(0,)), state


STEP_SOURCES = {
    'trainer': ('experiments.train_step.make_train_step', _trainer_step),
    'composed': ('benchmarks.train_step._composed_step (augment + '
                 'objective.loss_fn + optax.adam, jit, donated state)',
                 _composed_step),
}


def build_train_steps(config, step_source: str = 'trainer',
                      options_names: Sequence[str] = ('default',)
                      ) -> Dict[str, TrainStepSetup]:
  """Compiles the train step of `config` on a synthetic batch, once per
  option set; the model is initialised once and each step gets a copy.

  Args:
    config: an experiment config (`experiment_config`).
    step_source: 'trainer' (the trainer's `make_train_step`) or 'composed'.
    options_names: keys of `COMPILER_OPTIONS`.

  Returns:
    `{options_name: TrainStepSetup}`.
  """
  if step_source not in STEP_SOURCES:
    raise ValueError(f'step_source must be one of {sorted(STEP_SOURCES)}, '
                     f'got {step_source!r}.')
  description, make_step = STEP_SOURCES[step_source]
  model = models.make_model(config.model_type, config.model.to_dict())
  batch = {k: jnp.asarray(v)
           for k, v in common.synthetic_batch(config).items()}
  step, state = make_step(config, model, batch)
  setups = {}
  for name in options_names:
    start = time.perf_counter()
    compiled = common.compile_with(step, (state, batch), name)
    compile_s = time.perf_counter() - start
    setups[name] = TrainStepSetup(
        compiled, jax.tree.map(jnp.copy, state), batch, description,
        compile_s, common.compiled_flops(compiled),
        common.compiled_memory(compiled))
  return setups


def train_step_caller(setup: TrainStepSetup) -> Callable[[], Any]:
  """A no-argument call of `setup.step` that threads the donated state."""
  holder = {'state': setup.state}

  def one_step():
    holder['state'], scalars = setup.step(holder['state'], setup.batch)
    return scalars

  return one_step
