"""Orbax checkpoints of the train state, data-loader position and config.

Layout under `<workdir>/checkpoints/<step>/`:

* `state`  - the train state pytree (arrays, restored with their shardings);
* `loader` - JSON list with one entry per process: that process's data-loader
  state (grain iterator state, a JSON-able dict or bytes), so that a restarted
  run draws exactly the batches it would have drawn;
* `config` - the run's config as JSON, for the record.

A checkpoint directory only appears once Orbax has finished writing it, so a
crash mid-save leaves the previous checkpoint as the latest. A checkpoint
damaged later (a file deleted, truncated or flipped) is skipped by
`restore_newest`, named in one warning and moved to
`<workdir>/checkpoints_unreadable/` (kept, not deleted). Every restore
checks that the values it reads are finite (the whole train state when
training resumes; the parameters alone, `restore_trainable`, for evaluation
and prediction): a checkpoint holding NaN or infinite values is refused
(`NonFiniteCheckpointError`, naming the step and the way back), and a
resuming trainer skips it for the newest finite one, moving it to
`<workdir>/checkpoints_non_finite/`. `StopRequest` turns SIGTERM
(preemption) into a flag so the loop saves and stops cleanly.
"""
import base64
import json
import os
import pathlib
import signal
import threading
from typing import Any, Callable, List, Optional, Tuple

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from hpunet_jax.runtime import checkpoint_integrity

_STATE, _LOADER, _CONFIG = 'state', 'loader', 'config'
# The train state's trained parameters (`TrainState.trainable`).
_TRAINABLE = 'trainable'
_ITEMS = (_STATE, _LOADER, _CONFIG)
# Checkpoints live in `<workdir>/CHECKPOINT_DIR`.
CHECKPOINT_DIR = 'checkpoints'
# Damaged checkpoints are moved from `<dir>` to `<dir>UNREADABLE_SUFFIX`.
UNREADABLE_SUFFIX = '_unreadable'
# Non-finite ones, skipped by a resuming trainer, to `<dir>NON_FINITE_SUFFIX`.
NON_FINITE_SUFFIX = '_non_finite'


class CheckpointError(ValueError):
  """A checkpoint cannot be restored into this run."""


class NoReadableCheckpointError(CheckpointError):
  """Checkpoints exist, but every one of them is damaged."""


class NonFiniteCheckpointError(CheckpointError):
  """A checkpoint's train state holds NaN or infinite values."""

  def __init__(self, message: str, reason: str):
    super().__init__(message)
    self.reason = reason  # Short form for the trainer's fallback warning.


def encode_loader_state(state: Any) -> dict:
  """Makes a loader state JSON-able: bytes become base64, dicts stay JSON."""
  if isinstance(state, (bytes, bytearray)):
    return {'type': 'bytes', 'value': base64.b64encode(bytes(state)).decode()}
  try:
    return {'type': 'json', 'value': json.loads(json.dumps(state))}
  except TypeError as e:
    raise CheckpointError(
        f'data-loader state of type {type(state).__name__} is neither bytes '
        f'nor JSON-serialisable: {e}') from e


def decode_loader_state(encoded: dict) -> Any:
  """Inverse of `encode_loader_state`."""
  if encoded.get('type') == 'bytes':
    return base64.b64decode(encoded['value'])
  if encoded.get('type') == 'json':
    return encoded['value']
  raise CheckpointError(f'unknown data-loader state encoding: {encoded!r}')


def _gather_across_processes(encoded: dict) -> List[dict]:
  """All processes' encoded loader states, ordered by process index."""
  if jax.process_count() == 1:
    return [encoded]
  # Exchange as fixed-size uint8 arrays: lengths first, then padded payloads.
  payload = np.frombuffer(json.dumps(encoded).encode(), dtype=np.uint8)
  lengths = multihost_utils.process_allgather(np.int32(payload.size))
  padded = np.zeros(int(np.max(lengths)), np.uint8)
  padded[:payload.size] = payload
  gathered = multihost_utils.process_allgather(padded)
  return [json.loads(bytes(row[:n]).decode())
          for row, n in zip(np.asarray(gathered), np.asarray(lengths))]


class Checkpointer:
  """Saves and restores (train state, loader state, config) with Orbax."""

  def __init__(self, directory: str, *, max_to_keep: int = 2,
               use_async: bool = True):
    """Opens (and creates) a checkpoint directory.

    Args:
      directory: e.g. `<workdir>/checkpoints`.
      max_to_keep: how many most recent checkpoints to keep on disk.
      use_async: write to disk in a background thread after the device-to-host
        copy, so training continues while the files are written.
    """
    self.directory = os.fspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True,
        enable_async_checkpointing=use_async)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_names=_ITEMS)

  def restore_newest(self, restore_step: Callable[[int], Any], *,
                     move_unreadable: bool,
                     skip_non_finite: bool = False
                     ) -> Optional[Tuple[int, Any]]:
    """`restore_step` of the newest checkpoint that reads.

    A checkpoint whose restore fails and whose files are damaged
    (`checkpoint_integrity.find_problem`), or, with `skip_non_finite`, one
    holding non-finite values, is skipped, with one warning naming it, the
    reason and the step used instead.

    Args:
      restore_step: step -> restored things (e.g. `self.restore(step, ...)`).
        A `CheckpointError` it raises (e.g. config drift) passes through.
      move_unreadable: move skipped checkpoints to `<dir>_unreadable/` or
        `<dir>_non_finite/` (process 0 only; the trainer) or leave them
        (evaluation, predict).
      skip_non_finite: fall back past a `NonFiniteCheckpointError` (the
        trainer) instead of raising it (evaluation, predict).

    Returns:
      `(step, restore_step(step))`, or None when there is no checkpoint.

    Raises:
      NoReadableCheckpointError: every checkpoint is damaged or skipped.
      NonFiniteCheckpointError: the newest readable checkpoint holds
        non-finite values (without `skip_non_finite`).
      CheckpointError: a checkpoint with intact files does not restore
        into this run (one line, Orbax's reason).
    """
    checkpoint_integrity.silence_closed_loop_noise()
    skipped = []
    for step in sorted(self.all_steps(), reverse=True):
      step_dir = os.path.join(self.directory, str(step))
      try:
        result = restore_step(step)
      except NonFiniteCheckpointError as e:
        if not skip_non_finite:
          raise
        skipped.append(self._skip(step_dir, NON_FINITE_SUFFIX,
                                  move_unreadable, e.reason))
        continue
      except CheckpointError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        problem = checkpoint_integrity.find_problem(step_dir, _ITEMS)
        if problem is None:
          raise CheckpointError(
              f'checkpoint {step_dir} does not restore into this run: '
              f'{checkpoint_integrity.concise(e)}') from None
        skipped.append(self._skip(step_dir, UNREADABLE_SUFFIX,
                                  move_unreadable, f'is unreadable: {problem}'))
        continue
      for line in skipped:
        logging.warning('%s; %s %d.', line,
                        'resuming from' if move_unreadable else 'using', step)
      if skipped and move_unreadable:
        self._manager.reload()
      return step, result
    if skipped:
      raise NoReadableCheckpointError(
          f'no readable checkpoint in {self.directory}: '
          + '; '.join(skipped) + '.')
    return None

  def _skip(self, step_dir: str, suffix: str, move: bool, reason: str) -> str:
    """Moves a skipped checkpoint aside if asked; the line saying so."""
    where = 'left in place'
    if move and jax.process_index() == 0:
      where = 'moved to ' + checkpoint_integrity.move_aside(
          step_dir, self.directory.rstrip(os.sep) + suffix)
    return f'checkpoint {os.path.basename(step_dir)} {reason} ({where})'

  def _check_finite(self, step: int, state: Any) -> None:
    """Raises NonFiniteCheckpointError when `state` holds NaN or inf."""
    problem = checkpoint_integrity.non_finite_values(state)
    if problem is None:
      return
    step_dir = os.path.join(self.directory, str(step))
    earlier = [s for s in self.all_steps() if s < step]
    back = (f'checkpoint {max(earlier)} is the newest earlier one'
            if earlier else 'no earlier checkpoint exists')
    raise NonFiniteCheckpointError(
        f'checkpoint {step_dir} holds non-finite values ({problem}): '
        f'training had diverged when it was saved. Use an earlier step '
        f'({back}): remove or move that folder, or resume training, which '
        f'moves it to {self.directory.rstrip(os.sep)}{NON_FINITE_SUFFIX}/ '
        'and continues from the newest finite checkpoint.',
        reason=f'holds non-finite values ({problem})')

  def latest_step(self) -> Optional[int]:
    """The step of the newest complete checkpoint, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> List[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, train_state: Any, loader_state: Any,
           config_json: str) -> None:
    """Saves a checkpoint (every process must call this, with its own state).

    Args:
      step: the number of completed train steps.
      train_state: the train state pytree of jax arrays.
      loader_state: this process's data-loader state (bytes or JSON-able).
      config_json: the run's config as a JSON string.
    """
    loader_states = _gather_across_processes(encode_loader_state(loader_state))
    self._manager.save(
        step, force=True,
        args=ocp.args.Composite(**{
            _STATE: ocp.args.StandardSave(train_state),
            _LOADER: ocp.args.JsonSave(loader_states),
            _CONFIG: ocp.args.JsonSave(json.loads(config_json)),
        }))

  def restore(self, step: int, abstract_state: Any) -> Tuple[Any, Any]:
    """Restores the train state and this process's loader state.

    Args:
      step: which checkpoint.
      abstract_state: pytree of `jax.ShapeDtypeStruct` (with shardings) of the
        same structure as the saved train state.

    Returns:
      `(train_state, loader_state)`.

    Raises:
      CheckpointError: the checkpoint was written by a different number of
        processes (their loader positions cannot be mapped onto this run).
      NonFiniteCheckpointError: the train state holds NaN or inf.
    """
    restored = self._manager.restore(
        step, args=ocp.args.Composite(**{
            _STATE: ocp.args.StandardRestore(abstract_state),
            _LOADER: ocp.args.JsonRestore(),
        }))
    loader_states = restored[_LOADER]
    if len(loader_states) != jax.process_count():
      raise CheckpointError(
          f'checkpoint {self.directory}/{step} holds loader states of '
          f'{len(loader_states)} processes, this run has '
          f'{jax.process_count()}.')
    loader_state = decode_loader_state(loader_states[jax.process_index()])
    self._check_finite(step, restored[_STATE])
    return restored[_STATE], loader_state

  def restore_saved_state(self, step: int) -> Any:
    """The train state as saved (nested dicts of host arrays), without a
    target structure: for offline evaluation, which needs no optimiser or
    sharding.

    Raises:
      NonFiniteCheckpointError: it holds NaN or inf.
    """
    restored = self._manager.restore(
        step, args=ocp.args.Composite(**{
            _STATE: ocp.args.StandardRestore()}))
    self._check_finite(step, restored[_STATE])
    return restored[_STATE]

  def restore_trainable(self, step: int) -> Any:
    """The trained parameters of a checkpoint (the state's `trainable`,
    nested dicts of host arrays), read alone: offline evaluation needs
    neither the optimiser's moments (twice the parameters' size) nor the
    rest of the state. A state saved as a sequence (a `TrainState` tuple:
    step, trainable, ...) is read whole.

    Raises:
      CheckpointError: the saved state has no `trainable`.
      NonFiniteCheckpointError: the parameters hold NaN or inf.
    """
    path = os.path.join(self.directory, str(step), _STATE)
    # The item's tree metadata (the Checkpointer's `metadata` would look for
    # a step's metadata file in the item folder and log a warning).
    saved = ocp.PyTreeCheckpointHandler().metadata(pathlib.Path(path)).tree
    if not isinstance(saved, dict):
      return self.restore_saved_state(step)[1]
    if _TRAINABLE not in saved:
      raise CheckpointError(
          f'checkpoint {os.path.dirname(path)} holds no trained parameters '
          f'(its state has {sorted(saved)}, no {_TRAINABLE!r}).')
    wanted = {_TRAINABLE: jax.tree.map(
        lambda leaf: np.zeros(leaf.shape, leaf.dtype), saved[_TRAINABLE])}
    restore_args = jax.tree.map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
    restored = ocp.PyTreeCheckpointer().restore(
        path, args=ocp.args.PyTreeRestore(
            item=wanted, restore_args=restore_args, partial_restore=True))
    self._check_finite(step, restored)
    return restored[_TRAINABLE]

  def restore_config(self, step: int) -> dict:
    """The config dict saved with a checkpoint."""
    restored = self._manager.restore(
        step, args=ocp.args.Composite(**{_CONFIG: ocp.args.JsonRestore()}))
    return restored[_CONFIG]

  def wait_until_finished(self) -> None:
    """Blocks until background writes are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


class StopRequest:
  """Turns SIGTERM into a flag the train loop checks at step boundaries.

  Used as a context manager around the loop: the previous handler comes back
  on exit. Preemption notices (SIGTERM) thus end in a checkpoint at the next
  step boundary instead of a lost run.
  """

  def __init__(self):
    self._requested = False
    self._previous = None

  def __enter__(self):
    # Signal handlers can only be installed from the main thread.
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning('Received signal %d: saving a checkpoint at the end of '
                    'this step, then stopping.', signum)
    self._requested = True

  def requested(self) -> bool:
    """Whether any process was asked to stop (collective when multi-host)."""
    if jax.process_count() == 1:
      return self._requested
    flags = multihost_utils.process_allgather(np.int32(self._requested))
    return bool(np.any(flags))

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
