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
"""
import hashlib
import json
import os
from typing import Any, Dict, Mapping, Optional

FINISHED_FILE = 'finished.json'
CONFIG_FILE = 'config.json'
# Keys (dotted paths; a prefix covers its subtree) that may differ between the
# starts of one run: how long, how often to log/save/evaluate, where files
# are, how to compile, how the devices are laid out (the state is
# replicated, so any mesh restores it).
RESUME_SAFE_KEYS = (
    'num_train_steps', 'log_every_steps', 'checkpoint_every_steps',
    'checkpoints_to_keep', 'compilation_cache_dir', 'xla_cpu_eigen_conv',
    'mesh_shape', 'eval', 'data.data_dir', 'data.manual_dir',
    'data.read_threads', 'data.prefetch_buffer_size')


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


def config_hash(config: Any) -> str:
  """16 hex digits of sha256 over the config's non-resume-safe keys."""
  kept = {k: v for k, v in flatten(to_dict(config)).items()
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


def write_finished(workdir: str, step: int, config: Any) -> None:
  """Records that the run completed `step` steps with this config."""
  path = os.path.join(workdir, FINISHED_FILE)
  with open(path + '.tmp', 'w') as f:
    json.dump({'step': int(step), 'config_hash': config_hash(config)}, f)
  os.replace(path + '.tmp', path)


def clear_finished(workdir: str) -> None:
  """Drops the record before training past it."""
  path = os.path.join(workdir, FINISHED_FILE)
  if os.path.exists(path):
    os.remove(path)


def read_finished(workdir: str) -> Optional[Dict[str, Any]]:
  """`{'step', 'config_hash'}` of a completed run, or None."""
  path = os.path.join(workdir, FINISHED_FILE)
  try:
    with open(path) as f:
      record = json.load(f)
  except FileNotFoundError:
    return None
  except ValueError as e:
    raise ValueError(f'{path} is not valid JSON ({e}).') from None
  return record
