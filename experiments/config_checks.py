"""Config checks before heavy work: values, image size, overrides, drift.

* `validate_values`: settings that would run to completion and mean nothing
  (no checkpoint kept, negative kappa, a GECO decay outside [0, 1),
  non-positive learning rates).
* `check_image_size`: the model's `image_size` must fit inside the stored
  images (a larger crop trains on padding).
* `unknown_override`: a `--config.a.b=...` naming no key, as one line with
  the nearest valid keys (for the command-line entry points).
* `check_resume`: the config of a resumed run against the one saved with its
  checkpoint; a change outside `run_record.RESUME_SAFE_KEYS` (shapes, data,
  objective, optimiser, batch size, seed) is an error listing the keys.
"""
import difflib
import importlib.util
import os
import re
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from absl import logging

from hpunet_jax.runtime import checkpointing
from hpunet_jax.runtime import run_record


class ConfigError(ValueError):
  """A setting is out of range (the message names the key)."""


class ConfigDriftError(checkpointing.CheckpointError):
  """A resumed run's config changes what the checkpoint was trained for."""


def validate_values(config) -> None:
  """Raises ConfigError naming the key for out-of-range settings."""
  if int(config.checkpoints_to_keep) < 1:
    raise ConfigError(f'config.checkpoints_to_keep must be >= 1 (0 would '
                     f'delete every checkpoint), got '
                     f'{config.checkpoints_to_keep}.')
  loss = config.loss
  if loss.objective == 'geco':
    if float(loss.kappa) < 0:
      raise ConfigError(f'config.loss.kappa must be >= 0 (a reconstruction '
                       f'target per pixel), got {loss.kappa}.')
    if not 0 <= float(loss.geco_decay) < 1:
      raise ConfigError(f'config.loss.geco_decay must be in [0, 1), got '
                       f'{loss.geco_decay}.')
    if float(loss.geco_rate) <= 0:
      raise ConfigError(f'config.loss.geco_rate must be > 0, got '
                       f'{loss.geco_rate}.')
  elif float(loss.beta) < 0:
    raise ConfigError(f'config.loss.beta must be >= 0, got {loss.beta}.')
  rates = tuple(config.optimizer.learning_rates)
  if not rates or any(not float(r) > 0 for r in rates):
    raise ConfigError(f'config.optimizer.learning_rates must all be > 0, got '
                     f'{rates}.')


def check_image_size(config, stored_hw: Sequence[int]) -> None:
  """`config.image_size` (the augmented crop) must fit the loader's images.

  Args:
    config: the run's config.
    stored_hw: (H, W) of the images the training loader yields.
  """
  size, stored = tuple(config.image_size), tuple(int(s) for s in stored_hw)
  if size[0] > stored[0] or size[1] > stored[1]:
    builder = config.data.get('builder_config', None)
    raise ConfigError(
        f'config.image_size {size} is larger than the stored images '
        f'{stored} of {config.data.name}/{builder}: the model would train '
        'largely on padding. Lower config.image_size or use a builder config '
        'with larger images.')


def _load_config_file(spec: str):
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('_checked_config',
                                                       path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _keys_of(node) -> List[str]:
  return list(node.keys()) if hasattr(node, 'keys') else []


def unknown_override(argv: Sequence[str],
                     flag: str = 'config') -> Optional[str]:
  """One line for the first `--<flag>.a.b=` override naming no key, or None.

  Args:
    argv: the command line.
    flag: the config flag's name.
  """
  spec, overrides = None, []
  for index, arg in enumerate(argv[1:], start=1):
    match = re.match(rf'--{flag}(\.[^=]+)?=(.*)$', arg)
    if match and match.group(1) is None:
      spec = match.group(2)
    elif arg == f'--{flag}' and index + 1 < len(argv):
      spec = argv[index + 1]  # `--config file.py` (absl accepts both).
    elif match or re.match(rf'--{flag}\.[^=]+$', arg):
      overrides.append(arg[len(f'--{flag}.'):].split('=', 1)[0])
  if spec is None or not overrides or not os.path.isfile(
      spec.partition(':')[0]):
    return None
  try:
    config = _load_config_file(spec)
  except Exception:  # pylint: disable=broad-except
    return None  # The flag parser reports a broken config file itself.
  for override in overrides:
    node, walked = config, []
    for part in override.split('.'):
      keys = _keys_of(node)
      if part not in keys:
        prefix = '.'.join(walked)
        nearest = difflib.get_close_matches(part, keys, n=3, cutoff=0.5)
        listed = nearest or sorted(keys)[:10]
        where = f'config.{prefix}' if prefix else 'the config'
        return (f'--{flag}.{override}: {where} has no key {part!r}; '
                f'{"nearest" if nearest else "valid"} keys: '
                f'{", ".join(listed)}.')
      node, walked = node[part], walked + [part]
  return None


def config_changes(saved: Mapping[str, Any], current: Any
                   ) -> List[Tuple[str, Any, Any]]:
  """`(key, saved value, current value)` for every differing dotted key."""
  saved_flat = run_record.flatten(run_record.to_dict(saved))
  current_flat = run_record.flatten(run_record.to_dict(current))
  missing = object()
  return [(k, saved_flat.get(k, missing), current_flat.get(k, missing))
          for k in sorted(saved_flat.keys() | current_flat.keys())
          if saved_flat.get(k, missing) != current_flat.get(k, missing)]


def _shown(value) -> str:
  return '(absent)' if not isinstance(
      value, (str, int, float, bool, list, dict, type(None))) else repr(value)


def check_resume(saved: Mapping[str, Any], current: Any, step: int) -> None:
  """Raises ConfigDriftError for unsafe changes; logs the safe ones.

  Args:
    saved: the config saved with the checkpoint being resumed.
    current: this start's config.
    step: that checkpoint's step (for the messages).
  """
  changes = config_changes(saved, current)
  unsafe = [c for c in changes if not run_record.is_resume_safe(c[0])]
  listed = lambda cs: ', '.join(f'{k}: {_shown(a)} -> {_shown(b)}'
                                for k, a, b in cs)
  if unsafe:
    raise ConfigDriftError(
        f'the checkpoint at step {step} was trained with other settings '
        f'({listed(unsafe)}); these change the model, the data or the '
        'objective, so it cannot continue with them. Use the saved values '
        'or another --workdir.')
  if changes:
    logging.warning('Resuming from step %d with changed settings: %s.',
                    step, listed(changes))
