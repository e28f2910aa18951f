"""The training loop: mesh, shardings, jitted step, resume, loop, evaluation.

Everything that touches arrays is a pure function (`init_train_state`,
`train_step`); the loop only moves batches, logs and checkpoints. The state
is donated to the jitted step, so its buffers are reused in place.

A run is fully determined by its config: restarting from a checkpoint (after a
crash, a SIGTERM or a finished shorter run) reproduces the parameters and the
logged metrics of an uninterrupted run, because the train state (including
the rng and the GECO moving average) and the data-loader position are saved
together.
"""
import contextlib
import os
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from absl import logging
import jax
import ml_collections
import numpy as np

from datasets import augment
from datasets import masking
from datasets import pipeline
from experiments import config_checks
from experiments import convergence
from experiments import heldout_loss
from experiments import resume
from experiments import sharding
from experiments import train_step
from hpunet_jax import models
from hpunet_jax import precision
from hpunet_jax.runtime import checkpointing
from hpunet_jax.runtime import metric_writers
from hpunet_jax.runtime import progress
from hpunet_jax.runtime import run_record
from hpunet_jax.runtime import workdir_lock


class NonFiniteLossError(FloatingPointError):
  """The loss, the gradients or the updated state became NaN or infinite.

  Attributes:
    step: the step whose loss or update was non-finite.
  """

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for settings the loop cannot run with."""
  precision.check(config.compute_dtype, config.conv_precision)
  for key in ('num_train_steps', 'log_every_steps', 'checkpoint_every_steps',
              'batch_size'):
    if int(config[key]) <= 0:
      raise ValueError(f'config.{key} must be positive, got {config[key]}.')
  if len(config.image_size) != 2:
    raise ValueError(f'config.image_size must be (H, W), got '
                     f'{config.image_size}.')
  config_checks.validate_values(config)
  convergence.check_convergence_config(config.convergence)
  if config.batch_size % jax.process_count():
    raise ValueError(f'config.batch_size {config.batch_size} is not divisible '
                     f'by the {jax.process_count()} processes.')
  data_classes = pipeline.num_classes(config.data)
  if data_classes != config.model.num_classes:
    raise ValueError(f'config.model.num_classes is {config.model.num_classes} '
                     f'but data set {config.data.name!r} has {data_classes} '
                     'classes.')
  if config.get('masking', None):
    masking.check_model_kwargs(config.masking, config.model)
    if config.eval.num_samples:  # Fail before training, not after.
      from eval import evaluator  # pylint: disable=g-import-not-at-top
      evaluator.check_masking_supported(config.data.name)


def _init_state(init_fn: Callable, rng: jax.Array,
                state_sharding: jax.sharding.Sharding
                ) -> train_step.TrainState:
  """A fresh train state on the mesh (logged: initialisation compiles)."""
  with progress.timed('Initialising the model and optimiser (compiling)'):
    return jax.block_until_ready(
        jax.jit(init_fn, out_shardings=state_sharding)(rng))


def _abstract_state(init_fn: Callable, rng: jax.Array,
                    state_sharding: jax.sharding.Sharding
                    ) -> train_step.TrainState:
  """Shapes, dtypes and shardings of the train state, without computing it."""
  shapes = jax.eval_shape(init_fn, rng)
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=state_sharding),
      shapes)


def _check_finite(step: int, scalars: Mapping[str, np.ndarray],
                  last_checkpoint: Optional[int]) -> None:
  """Raises NonFiniteLossError when `step`'s loss, gradients or updated
  state (`non_finite_state`, counted in the jitted step) are non-finite."""
  bad = [k for k in ('loss', 'grad_norm') if not np.isfinite(scalars[k])]
  state_values = int(scalars['non_finite_state'])
  if not bad and not state_values:
    return
  if bad:
    what = (f'{" and ".join(bad)} at step {step} '
            f'({", ".join(f"{k}={scalars[k]}" for k in bad)})')
  else:
    what = (f'train state after the update of step {step} ({state_values} '
            f'NaN/inf values; learning_rate={scalars["learning_rate"]}, '
            f'grad_norm={scalars["grad_norm"]})')
  kept = (f'The last checkpoint (step {last_checkpoint}) is kept.'
          if last_checkpoint else 'No checkpoint was saved before it.')
  raise NonFiniteLossError(
      f'Non-finite {what}; stopping. {kept} To go on, lower '
      'config.optimizer.learning_rates or set config.optimizer.'
      'clip_global_norm and rerun with --accept_config_changes=optimizer '
      '(docs/training_failures.md).', step=step)


def _batch_shapes(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                  local_example: Mapping[str, np.ndarray],
                  augment_config: Mapping[str, Any],
                  masking_config: Optional[Mapping[str, Any]] = None
                  ) -> Tuple[dict, dict]:
  """Global loader batch shapes and a one-example zero batch for init.

  Args:
    config: the run's config.
    mesh: the training mesh.
    local_example: one batch of this process's loader (fixes the shapes).
    augment_config: kwargs of `augment_batch` (it may crop).
    masking_config: kwargs of `masking.extrapolation_mask` (it appends
      channels), or None.

  Returns:
    `(batch_example, init_batch)`: ShapeDtypeStructs `[B, H_in, ...]` of the
    global loader batch, and numpy zeros `[1, H, W, ...]` of the augmented
    shapes (identical on every process; parameter shapes depend on neither
    batch size nor values).
  """
  batch_example = {
      k: jax.ShapeDtypeStruct((config.batch_size,) + np.shape(v)[1:],
                              np.asarray(v).dtype)
      for k, v in local_example.items()}
  sharding.check_batch_divisible(mesh, config.batch_size,
                                 batch_example['image'].shape[1:3])
  config_checks.check_image_size(config, batch_example['image'].shape[1:3])

  def augment_and_mask(rng, batch):
    batch = augment.augment_batch(rng, batch, **augment_config)
    if masking_config:
      batch = masking.extrapolation_mask(rng, batch, **masking_config)
    return batch

  augmented = jax.eval_shape(augment_and_mask, jax.random.PRNGKey(0),
                             batch_example)
  if tuple(augmented['image'].shape[1:3]) != tuple(config.image_size):
    raise ValueError(
        f'augmented images are {augmented["image"].shape[1:3]}, but '
        f'config.image_size is {tuple(config.image_size)}.')
  sharding.check_batch_divisible(mesh, config.batch_size, config.image_size)
  init_batch = {k: np.zeros((1,) + v.shape[1:], v.dtype)
                for k, v in augmented.items()}
  return batch_example, init_batch


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       accepted_changes: Sequence[str] = ()
                       ) -> train_step.TrainState:
  """Trains (resuming from `<workdir>/checkpoints` if any), then evaluates.

  Args:
    config: a task config (see `experiments/<task>.py`).
    workdir: run directory: checkpoints, metrics.jsonl, TensorBoard events,
      config.json.
    accepted_changes: config keys or subtrees (e.g. 'optimizer') that may
      differ from the resumed checkpoint's config (`--accept_config_changes`).

  Returns:
    The final train state.

  Raises:
    WorkdirError: (`WorkdirLockedError`) another trainer runs in
      `workdir`, or it is a file.
    CheckpointError: (`ConfigDriftError`, `NoReadableCheckpointError`) the
      checkpoints cannot be resumed with this config.
    NonFiniteLossError: a step's loss or update was NaN or infinite; it is
      not saved, and `run_record.read_non_finite` reports it.
  """
  validate_config(config)
  config_checks.check_accepted_keys(config, accepted_changes)
  # Only process 0 locks: the other processes of a run share its workdir.
  with (workdir_lock.WorkdirLock(workdir) if jax.process_index() == 0
        else contextlib.nullcontext()):
    return _train_and_evaluate(config, workdir, tuple(accepted_changes))


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        accepted_changes: Tuple[str, ...]
                        ) -> train_step.TrainState:
  """`train_and_evaluate` with the workdir locked."""
  process_index, process_count = jax.process_index(), jax.process_count()
  mesh = sharding.make_mesh(config.mesh_shape)
  logging.info('Mesh %s over %d devices, %d process(es).', dict(mesh.shape),
               mesh.size, process_count)
  model = precision.mixed_precision_model(
      models.make_model(config.model_type, config.model.to_dict()),
      config.compute_dtype)
  optimizer, schedule = train_step.make_optimizer(config.optimizer.to_dict())
  loss_config = config.loss.to_dict()
  augment_config = config.augment.to_dict()
  masking_config = (config.masking.to_dict() if config.get('masking', None)
                    else None)

  train_iter = pipeline.make_train_iterator(
      config.data, batch_size=config.batch_size // process_count,
      seed=config.seed, shard_index=process_index, shard_count=process_count)
  initial_loader_state = train_iter.get_state()
  with progress.timed('Reading the first batch'):
    first_batch = next(train_iter)
  batch_example, init_batch = _batch_shapes(config, mesh, first_batch,
                                            augment_config, masking_config)
  state_sharding = sharding.replicated(mesh)
  init_fn = lambda rng: train_step.init_train_state(
      rng, init_batch, model=model, optimizer=optimizer,
      loss_config=loss_config)
  rng = jax.random.PRNGKey(config.seed)

  checkpointer = checkpointing.Checkpointer(
      os.path.join(workdir, checkpointing.CHECKPOINT_DIR),
      max_to_keep=config.checkpoints_to_keep)
  try:
    start_step, state = resume.restore_or_init(
        checkpointer, config, lambda: _init_state(init_fn, rng, state_sharding),
        lambda: _abstract_state(init_fn, rng, state_sharding), train_iter,
        initial_loader_state, accepted_changes)
  except BaseException:
    checkpointer.close()
    raise
  config_json = config.to_json_best_effort(indent=2)
  resume.record_start(workdir, config, start_step)

  step_fn = train_step.make_train_step(
      model=model, optimizer=optimizer, schedule=schedule,
      loss_config=loss_config, augment_config=augment_config, mesh=mesh,
      batch_example=batch_example,
      eigen_conv=config.xla_cpu_eigen_conv,
      masking_config=masking_config, conv_precision=config.conv_precision)
  if (start_step < config.num_train_steps and config.eval.num_samples
      and process_index == 0):
    check_evaluation_memory(config, state.trainable['model'], model)
  writer = metric_writers.MetricWriter(
      workdir, start_step=start_step, total_steps=config.num_train_steps,
      enabled=process_index == 0)
  try:
    state, finished = _train_loop(
        config, state, start_step, step_fn, mesh, train_iter, writer,
        lambda step, state, loader_state: checkpointer.save(
            step, state, loader_state, config_json),
        lambda *spike: (convergence.record_spike(workdir, *spike)
                        if process_index == 0 else None))
  except NonFiniteLossError as e:
    if process_index == 0:
      run_record.write_non_finite(workdir, e.step, str(e))
    raise
  finally:
    checkpointer.wait_until_finished()
    checkpointer.close()
    writer.close()
  if finished and process_index == 0:
    run_record.write_finished(workdir, config.num_train_steps, config,
                              judge_convergence(config, workdir).to_dict())
  if finished:
    final_evaluation(config, state.trainable['model'], model, workdir)
  return state


def _train_loop(config: ml_collections.ConfigDict,
                state: train_step.TrainState, start_step: int,
                step_fn: Callable, mesh: jax.sharding.Mesh, train_iter,
                writer: metric_writers.MetricWriter,
                save: Callable[[int, train_step.TrainState, Any], None],
                record_spike: Callable[[int, float, float], None]
                ) -> Tuple[train_step.TrainState, bool]:
  """Steps from `start_step` to `config.num_train_steps`; hands every
  reconstruction-loss spike (`convergence.SpikeCounter`) to `record_spike`.

  Returns:
    `(state, finished)`; `finished` is False when SIGTERM stopped the run
    early (after saving a checkpoint).

  Raises:
    NonFiniteLossError: at the first step with a NaN/inf loss, gradient or
      updated state, before that step's state is saved (so every saved
      checkpoint is finite).
  """
  total_steps = config.num_train_steps
  last_checkpoint = start_step or None
  spikes = convergence.SpikeCounter(config.convergence.spike_factor)
  with checkpointing.StopRequest() as stop_request:
    if start_step < total_steps:
      local_batch = next(train_iter)
      logging.info('Compiling the train step (it runs as step %d) ...',
                   start_step + 1)
    for step in range(start_step + 1, total_steps + 1):
      loader_state = train_iter.get_state()  # Position after this batch.
      state, scalars = step_fn(state,
                               sharding.global_batch(mesh, local_batch))
      if step < total_steps:
        local_batch = next(train_iter)  # Overlaps with the device step.
      scalars = jax.device_get(scalars)
      if step == start_step + 1:  # Logs the compile time; ETA starts here.
        writer.first_step_done(step)
      _check_finite(step, scalars, last_checkpoint)
      average = spikes.average
      if spikes.update(float(scalars['rec_mean'])):
        record_spike(step, float(scalars['rec_mean']), average)
      if step % config.log_every_steps == 0 or step == total_steps:
        writer.write(step, scalars)
      stop_now = stop_request.requested() and step < total_steps
      if (step % config.checkpoint_every_steps == 0 or step == total_steps or
          stop_now):
        save(step, state, loader_state)
        last_checkpoint = step
      if stop_now:
        logging.warning('Stopped at step %d on request; restart with the '
                        'same command to continue.', step)
        return state, False
  return state, True


def judge_convergence(config: ml_collections.ConfigDict,
                      workdir: str) -> convergence.Convergence:
  """Whether the finished run ended converged (`experiments.convergence`):
  GECO from its metrics.jsonl, the ELBO from the held-out loss of its last
  two checkpoints; logged in one line."""
  try:
    heldout = None
    if convergence.rule_of(config) == convergence.HELDOUT_RULE:
      heldout = heldout_loss.checkpoint_losses(config, workdir)
    verdict = convergence.assess(config, convergence.read_history(workdir),
                                 heldout)
  except (OSError, ValueError, KeyError) as e:
    verdict = convergence.Convergence(False, 'unreadable', {},
                                      f'not judged: {e}')
  spikes = convergence.spike_steps(workdir, config.num_train_steps)
  verdict.values['spikes'] = len(spikes)
  logging.log(logging.INFO if verdict.converged else logging.WARNING,
              '%s at step %d (%s): %s; %d reconstruction-loss spikes%s.',
              'Converged' if verdict.converged else 'NOT converged',
              config.num_train_steps, verdict.rule, verdict.reason,
              len(spikes), f' (steps {spikes[:5]})' if spikes else '')
  return verdict


def check_evaluation_memory(config: ml_collections.ConfigDict, params: Any,
                            model: models.Model) -> None:
  """Before training: the final evaluation's samples must fit in memory
  (`eval.sample_memory.SampleMemoryError` naming the count that fits)."""
  from eval import evaluator  # pylint: disable=g-import-not-at-top
  evaluator.Evaluator(config, model).check_memory(params, config.eval.split)


def final_evaluation(config: ml_collections.ConfigDict, params: Any,
                     model: models.Model,
                     workdir: str) -> Optional[Dict[str, Any]]:
  """Runs the evaluator on `config.eval.split` and logs its summary.

  Only process 0 evaluates, on its local device with a host copy of the
  parameters; the evaluator also writes metrics.json and figures into
  `eval.outputs.final_results_dir(workdir, config)`.

  Args:
    config: the run's config; `config.eval` gives `split` and `num_samples`
      (`num_samples` 0 skips evaluation, as the tiny configs do).
    params: the trained model parameters (replicated).
    model: the model's pure functions.
    workdir: the run directory.

  Returns:
    The evaluator's summary dict, or None when skipped.
  """
  if not config.eval.num_samples:
    logging.info('config.eval.num_samples is 0: skipping the final '
                 'evaluation.')
    return None
  params = jax.device_get(params)  # Every process holds a full replica.
  if jax.process_index() != 0:
    return None
  from eval import evaluation  # pylint: disable=g-import-not-at-top
  # Into `eval.outputs.final_results_dir`; a rerun of a finished run keeps it.
  summary = evaluation.evaluate(config, params, model, config.eval.split,
                                config.eval.num_samples, workdir=workdir,
                                step=config.num_train_steps, existing='keep')
  logging.info('Evaluation on %s with %d samples: %s', config.eval.split,
               config.eval.num_samples, summary)
  return summary
