"""What a run records about itself: its configs, its config hash, `finished`.

* `config.json` is the config of the newest start of the run;
  `config.<start step>.json` keeps the config of every start (0 = the first),
  so a resume with changed settings never erases the record of the old ones.
* `config_hash` identifies what a config trains: a hash over every key except
  `RESUME_SAFE_KEYS` (those that change neither the model nor the data
  stream nor the objective), so runs that differ only in paths, logging or
  evaluation settings share it.
* `finished.json`, written once the final checkpoint is on disk, holds the
  step and config hash of a completed run; a run resumed past it loses it
  until it completes again. Consumers (the study) trust only this record.
* `non_finite.json`, written when training stops on a NaN or infinite loss
  or state, holds that step and the trainer's message; the next start that
  trains drops it.
"""
import hashlib
import json
import os
from typing import Any, Dict, Mapping, Optional

FINISHED_FILE = 'finished.json'
NON_FINITE_FILE = 'non_finite.json'
CONFIG_FILE = 'config.json'
# Keys (dotted paths; a prefix covers its subtree) that may differ between the
# starts of one run: how long, how often to log/save/evaluate, where files
# are, how to compile, how the devices are laid out (the state is
# replicated, so any mesh restores it), how a finished run is judged.
RESUME_SAFE_KEYS = (
    'num_train_steps', 'log_every_steps', 'checkpoint_every_steps',
    'checkpoints_to_keep', 'compilation_cache_dir', 'xla_cpu_eigen_conv',
    'mesh_shape', 'eval', 'convergence', 'data.data_dir', 'data.manual_dir',
    'data.read_threads', 'data.prefetch_buffer_size')

# Keys configs gained after runs were recorded, with the value that trains as
# those runs did: at that value a key counts as absent, so the runs' config
# hashes stay valid and they resume without a drift error.
ADDED_KEYS = {'optimizer.clip_global_norm': None,
              'loss.geco_multiplier_rate_down': None}


def to_dict(config: Any) -> Dict[str, Any]:
  """A ConfigDict or dict as plain JSON types (tuples become lists)."""
  if hasattr(config, 'to_json_best_effort'):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(config))


def flatten(config: Mapping[str, Any], prefix: str = '') -> Dict[str, Any]:
  """`{'a': {'b': 1}}` -> `{'a.b': 1}`."""
  flat = {}
  for key, value in config.items():
    if isinstance(value, Mapping):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def is_resume_safe(key: str) -> bool:
  return any(key == safe or key.startswith(safe + '.')
             for safe in RESUME_SAFE_KEYS)


def comparable(config: Any) -> Dict[str, Any]:
  """The config flattened, without `ADDED_KEYS` at their listed values."""
  return {k: v for k, v in flatten(to_dict(config)).items()
          if not (k in ADDED_KEYS and v == ADDED_KEYS[k])}


def config_hash(config: Any) -> str:
  """16 hex digits of sha256 over the config's non-resume-safe keys
  (`ADDED_KEYS` at their listed values left out)."""
  kept = {k: v for k, v in comparable(config).items()
          if not is_resume_safe(k)}
  text = json.dumps(kept, sort_keys=True, separators=(',', ':'))
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_config(workdir: str, config: Any, start_step: int) -> None:
  """Writes `config.json` and `config.<start_step>.json` (process 0)."""
  text = json.dumps(to_dict(config), indent=2)
  os.makedirs(workdir, exist_ok=True)
  for name in (f'config.{start_step}.json', CONFIG_FILE):
    path = os.path.join(workdir, name)
    with open(path + '.tmp', 'w') as f:
      f.write(text)
    os.replace(path + '.tmp', path)


def _write_record(workdir: str, name: str, record: Dict[str, Any]) -> None:
  path = os.path.join(workdir, name)
  with open(path + '.tmp', 'w') as f:
    json.dump(record, f)
  os.replace(path + '.tmp', path)


def _read_record(workdir: str, name: str) -> Optional[Dict[str, Any]]:
  path = os.path.join(workdir, name)
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except ValueError as e:
    raise ValueError(f'{path} is not valid JSON ({e}).') from None


def _clear_record(workdir: str, name: str) -> None:
  path = os.path.join(workdir, name)
  if os.path.exists(path):
    os.remove(path)


def write_finished(workdir: str, step: int, config: Any,
                   convergence: Optional[Mapping[str, Any]] = None) -> None:
  """Records that the run completed `step` steps with this config, and
  whether it ended converged (`experiments.convergence.Convergence`'s
  dict: `converged`, `rule`, `values`, `reason`)."""
  record = {'step': int(step), 'config_hash': config_hash(config)}
  if convergence is not None:
    record['converged'] = bool(convergence['converged'])
    record['convergence'] = dict(convergence)
  _write_record(workdir, FINISHED_FILE, record)


def clear_finished(workdir: str) -> None:
  """Drops the record before training past it."""
  _clear_record(workdir, FINISHED_FILE)


def read_finished(workdir: str) -> Optional[Dict[str, Any]]:
  """`{'step', 'config_hash'[, 'converged', 'convergence']}` of a completed
  run, or None."""
  return _read_record(workdir, FINISHED_FILE)


def write_non_finite(workdir: str, step: int, message: str) -> None:
  """Records that training stopped on non-finite values at `step`."""
  _write_record(workdir, NON_FINITE_FILE,
                {'step': int(step), 'message': message})


def clear_non_finite(workdir: str) -> None:
  """Drops the record when training goes on."""
  _clear_record(workdir, NON_FINITE_FILE)


def read_non_finite(workdir: str) -> Optional[Dict[str, Any]]:
  """`{'step', 'message'}` of the last stop on non-finite values, or None."""
  return _read_record(workdir, NON_FINITE_FILE)


def unfinished_note(workdir: str, step: int,
                    num_train_steps: int) -> Optional[str]:
  """One line for an evaluation of checkpoint `step` of a run that stopped
  on non-finite values or has not finished; None for a finished run.

  Raises:
    ValueError: a record is not valid JSON.
  """
  stopped = read_non_finite(workdir)
  if stopped is not None:
    return (f'{workdir} stopped on non-finite values at step '
            f'{stopped["step"]}: evaluating its last finite checkpoint (step '
            f'{step}), not a finished run.')
  if read_finished(workdir) is None:
    return (f'{workdir} has not finished training (no {FINISHED_FILE}): '
            f'evaluating checkpoint step {step} of {num_train_steps}.')
  return None
