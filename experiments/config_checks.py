"""Config checks before heavy work: values, image size, overrides, drift.

* `validate_values`: settings that would run to completion and mean nothing
  or fail only after the data is read (no checkpoint kept, NaN or infinity
  anywhere, negative kappa, a GECO decay outside [0, 1), non-positive or
  non-numeric learning rates, fractions outside their ranges, augmentation
  and masking ranges, evaluation counts, a non-positive gradient-clipping
  norm); the trainer runs it before it writes anything.
* `check_image_size`: the model's `image_size` must fit inside the stored
  images (a larger crop trains on padding).
* `unknown_override`: a `--config.a.b=...` naming no key, as one line with
  the nearest valid keys (for the command-line entry points).
* `check_resume`: the config of a resumed run against the one saved with its
  checkpoint; a change outside `run_record.RESUME_SAFE_KEYS` (shapes, data,
  objective, optimiser, batch size, seed) is an error listing the keys,
  unless the start accepts those keys (`--accept_config_changes`).
"""
import difflib
import importlib.util
import math
import os
import re
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from absl import logging

from hpunet_jax import objective
from hpunet_jax.runtime import checkpointing
from hpunet_jax.runtime import run_record


class ConfigError(ValueError):
  """A setting is out of range (the message names the key)."""


class ConfigDriftError(checkpointing.CheckpointError):
  """A resumed run's config changes what the checkpoint was trained for."""


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_finite(config) -> None:
  """No NaN or infinity in any setting (none has a use for one)."""
  for key, value in run_record.flatten(run_record.to_dict(config)).items():
    for item in value if isinstance(value, list) else [value]:
      if isinstance(item, float) and not math.isfinite(item):
        raise ConfigError(f'config.{key} must be finite, got {value!r}.')


def _check_in(key: str, value, low: float, high: float, *,
              low_open: bool = False, high_open: bool = False) -> None:
  """`value` a number in [low, high], ends open where asked."""
  if not _is_number(value) or not (
      (low < value if low_open else low <= value) and
      (value < high if high_open else value <= high)):
    interval = (f'{"(" if low_open else "["}{low}, {high}'
                f'{")" if high_open else "]"}')
    raise ConfigError(f'config.{key} must be a number in {interval}, got '
                      f'{value!r}.')


def _check_learning_rates(optimizer) -> None:
  rates = tuple(optimizer.learning_rates)
  if not rates or any(not _is_number(r) or not r > 0 for r in rates):
    raise ConfigError(
        f'config.optimizer.learning_rates must be finite numbers > 0 (e.g. '
        f'--config.optimizer.learning_rates="(1e-4, 5e-5)"), got {rates}.')
  boundaries = tuple(optimizer.boundaries)
  if len(rates) != len(boundaries) + 1:
    raise ConfigError(
        f'config.optimizer.learning_rates needs len(boundaries) + 1 = '
        f'{len(boundaries) + 1} rates for boundaries {boundaries}, got '
        f'{rates}.')
  for name in ('b1', 'b2'):
    if name in optimizer:
      _check_in(f'optimizer.{name}', optimizer[name], 0, 1, high_open=True)
  if 'eps' in optimizer:
    _check_in('optimizer.eps', optimizer.eps, 0, math.inf, low_open=True)


def _check_augment(augment) -> None:
  for name in ('rotation_degrees', 'shear', 'elastic_alpha'):
    if name in augment:
      _check_in(f'augment.{name}', augment[name], 0, math.inf)
  if 'elastic_sigma' in augment:
    _check_in('augment.elastic_sigma', augment.elastic_sigma, 0, math.inf,
              low_open=True)
  scale = tuple(augment.get('scale_range', (1.0, 1.0)))
  if len(scale) != 2 or not all(_is_number(v) for v in scale) or not (
      0 < scale[0] <= scale[1]):
    raise ConfigError(f'config.augment.scale_range must be (low, high) with '
                      f'0 < low <= high, got {scale}.')


def _check_eval(eval_config) -> None:
  """Counts of `config.eval` (those set)."""
  minimum = dict(num_samples=0, batch_size=1, num_resamples=1,
                 num_figure_examples=0, cluster_alpha=0, few_samples=1)
  for name, low in minimum.items():
    value = eval_config.get(name, low)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise ConfigError(f'config.eval.{name} must be an integer >= {low}, '
                        f'got {value!r}.')
  examples = eval_config.get('num_examples', None)
  if examples is not None and (isinstance(examples, bool) or
                               not isinstance(examples, int) or examples < 1):
    raise ConfigError(f'config.eval.num_examples must be None (the whole '
                      f'split) or an integer >= 1, got {examples!r}.')


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
    try:  # The rule and its rates, as the loss will read them.
      objective.multiplier_rule(loss.to_dict())
    except ValueError as e:
      raise ConfigError(f'config.{e}') from None
  elif float(loss.beta) < 0:
    raise ConfigError(f'config.loss.beta must be >= 0, got {loss.beta}.')
  # 0 = every pixel (the ELBO's), else the kept fraction of the pixels.
  _check_in('loss.top_k_fraction', loss.get('top_k_fraction', 0.0), 0, 1)
  _check_in('loss.weight_decay', loss.get('weight_decay', 0.0), 0, math.inf)
  _check_learning_rates(config.optimizer)
  check_clip_global_norm(config.optimizer.get('clip_global_norm', None))
  if config.get('augment', None) is not None:
    _check_augment(config.augment)
  masking = config.get('masking', None)
  if masking:
    _check_in('masking.min_fraction', masking.min_fraction, 0, 1)
    _check_in('masking.max_fraction', masking.max_fraction,
              masking.min_fraction, 1)
  if config.get('eval', None) is not None:
    _check_eval(config.eval)
  check_finite(config)  # After the checks with more to say.


def check_clip_global_norm(value: Optional[float]) -> None:
  """None (no clipping) or a finite positive global norm."""
  if value is None:
    return
  if (isinstance(value, bool) or not isinstance(value, (int, float))
      or not math.isfinite(value) or value <= 0):
    raise ConfigError(f'config.optimizer.clip_global_norm must be None (no '
                      f'clipping) or a finite number > 0, got {value!r}.')


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
  """`(key, saved value, current value)` for every differing dotted key
  (a key of `run_record.ADDED_KEYS` at its listed value counts as absent)."""
  saved_flat = run_record.comparable(saved)
  current_flat = run_record.comparable(current)
  missing = object()
  # An absent added key is shown at the value it stands for.
  value = lambda flat, k: flat.get(k, run_record.ADDED_KEYS.get(k, missing))
  return [(k, value(saved_flat, k), value(current_flat, k))
          for k in sorted(saved_flat.keys() | current_flat.keys())
          if saved_flat.get(k, missing) != current_flat.get(k, missing)]


def _shown(value) -> str:
  return '(absent)' if not isinstance(
      value, (str, int, float, bool, list, dict, type(None))) else repr(value)


def _is_under(key: str, prefixes: Sequence[str]) -> bool:
  return any(key == p or key.startswith(p + '.') for p in prefixes)


def check_accepted_keys(config: Any, accepted: Sequence[str]) -> None:
  """Every key (or subtree) named by `--accept_config_changes` exists."""
  keys = run_record.flatten(run_record.to_dict(config))
  for name in accepted:
    if not any(_is_under(k, [name]) for k in keys):
      depth = name.count('.') + 1  # Keys or subtrees as deep as `name`.
      candidates = sorted({'.'.join(k.split('.')[:depth]) for k in keys})
      nearest = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
      raise ConfigError(
          f'--accept_config_changes: the config has no key {name!r}'
          + (f'; nearest: {", ".join(nearest)}.' if nearest else '.'))


def check_resume(saved: Mapping[str, Any], current: Any, step: int,
                 accepted: Sequence[str] = ()) -> None:
  """Raises ConfigDriftError for unsafe changes; logs the safe ones.

  Args:
    saved: the config saved with the checkpoint being resumed.
    current: this start's config.
    step: that checkpoint's step (for the messages).
    accepted: dotted keys or subtrees (e.g. 'optimizer') whose changes the
      user accepts (`--accept_config_changes`); logged, not refused.
  """
  changes = config_changes(saved, current)
  unsafe = [c for c in changes if not run_record.is_resume_safe(c[0])
            and not _is_under(c[0], accepted)]
  listed = lambda cs: ', '.join(f'{k}: {_shown(a)} -> {_shown(b)}'
                                for k, a, b in cs)
  if unsafe:
    raise ConfigDriftError(
        f'the checkpoint at step {step} was trained with other settings '
        f'({listed(unsafe)}); these change the model, the data or the '
        'objective, so it cannot continue with them. Use the saved values '
        'or another --workdir (or, to continue this run with them on '
        'purpose, e.g. a lower learning rate after a non-finite loss, '
        '--accept_config_changes=KEY,...).')
  if changes:
    logging.warning('Resuming from step %d with changed settings: %s.',
                    step, listed(changes))
