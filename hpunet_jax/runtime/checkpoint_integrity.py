"""Telling a damaged checkpoint from one that does not fit the run.

Orbax reports a damaged file (deleted, truncated, bit-flipped) as a long
tensorstore error, and its asyncio reads still in flight then fail against a
closed event loop, each printing an "Event loop is closed" traceback through
`sys.unraisablehook`. This module

* finds what is wrong with a checkpoint folder on its own, with one
  synchronous pass over its files (`find_problem`): JSON files must parse,
  the items' files must exist, every OCDBT value must read (tensorstore
  verifies their checksums);
* shortens an Orbax/tensorstore message to its first clause (`concise`);
* silences only those "Event loop is closed" leftovers
  (`silence_closed_loop_noise`);
* moves a damaged checkpoint out of Orbax's sight without deleting it
  (`move_aside`);
* finds NaN or infinite values in a restored state (`non_finite_values`).
"""
import json
import os
import shutil
import sys
from typing import Any, Optional, Sequence

import jax
import numpy as np
import tensorstore as ts

# Files Orbax writes as JSON (ocdbt data files and manifests are binary).
_JSON_NAMES = ('_CHECKPOINT_METADATA', '_METADATA', '_sharding', 'metadata')
_OCDBT_MANIFEST = 'manifest.ocdbt'


def concise(error: BaseException, limit: int = 300) -> str:
  """The first clause of an Orbax/tensorstore message, at most `limit`
  characters (their messages append a page of tensorstore spec)."""
  text = str(error).split(' [tensorstore_spec', 1)[0].strip()
  text = text.splitlines()[0] if text else type(error).__name__
  return text if len(text) <= limit else text[:limit - 3] + '...'


def _ocdbt_problem(folder: str) -> Optional[str]:
  try:
    store = ts.KvStore.open({'driver': 'ocdbt',
                             'base': f'file://{os.path.abspath(folder)}/'}
                            ).result()
    for key in store.list().result():
      store.read(key).result()
  except (ValueError, OSError) as e:  # tensorstore raises ValueError.
    return concise(e)
  return None


def find_problem(step_dir: str, items: Sequence[str]) -> Optional[str]:
  """What is damaged in the checkpoint folder `step_dir`, or None.

  Args:
    step_dir: e.g. `<workdir>/checkpoints/60`.
    items: item folders it must hold, e.g. ('state', 'loader', 'config').

  Returns:
    A one-line reason naming the file, or None when every file reads.
  """
  for item in items:
    if not os.path.isdir(os.path.join(step_dir, item)):
      return f'{os.path.join(step_dir, item)} is missing'
  json_items = [i for i in items
                if not os.path.exists(os.path.join(step_dir, i,
                                                   _OCDBT_MANIFEST))]
  for item in json_items:  # JsonSave items: one `metadata` file each.
    path = os.path.join(step_dir, item, 'metadata')
    if not os.path.isfile(path):
      return f'{path} is missing'
  for root, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(root, name)
      if name in _JSON_NAMES or os.path.basename(root) == 'array_metadatas':
        try:
          with open(path) as f:
            json.load(f)
        except (OSError, ValueError) as e:
          return f'{path} is not valid JSON ({e})'
    if _OCDBT_MANIFEST in files:
      problem = _ocdbt_problem(root)
      if problem:
        return problem
  return None


def move_aside(step_dir: str, aside_dir: str) -> str:
  """Moves `step_dir` into `aside_dir` (a new name if taken); returns where."""
  os.makedirs(aside_dir, exist_ok=True)
  name = os.path.basename(os.path.normpath(step_dir))
  target, count = os.path.join(aside_dir, name), 1
  while os.path.exists(target):
    target = os.path.join(aside_dir, f'{name}.{count}')
    count += 1
  shutil.move(step_dir, target)
  return target


def _is_closed_loop_noise(unraisable) -> bool:
  value = getattr(unraisable, 'exc_value', None)
  return (isinstance(value, RuntimeError) and
          str(value) == 'Event loop is closed')


def silence_closed_loop_noise() -> None:
  """Drops the "Event loop is closed" reports of reads abandoned after a
  failed restore; every other unraisable exception still reaches the
  previous hook. Idempotent."""
  previous = sys.unraisablehook
  if getattr(previous, '_drops_closed_loop_noise', False):
    return

  def hook(unraisable):
    if not _is_closed_loop_noise(unraisable):
      previous(unraisable)

  hook._drops_closed_loop_noise = True  # pylint: disable=protected-access
  sys.unraisablehook = hook


def _host_values(leaf: Any) -> np.ndarray:
  """A leaf as a host array; a jax array spread over several processes
  contributes this process's first shard (the whole array when
  replicated, as the train state is)."""
  if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
    leaf = leaf.addressable_data(0)
  return np.asarray(leaf)


def non_finite_values(tree: Any) -> Optional[str]:
  """None when every floating value of `tree` is finite, else e.g.
  '12 of 3456 values are NaN or infinite, first in trainable/model/w'."""
  bad, total, first = 0, 0, None
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    values = _host_values(leaf)
    if not jax.numpy.issubdtype(values.dtype, jax.numpy.floating):
      continue
    count = int(values.size - np.count_nonzero(np.isfinite(values)))
    total += values.size
    if count and first is None:
      first = '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(
          k, 'idx', k)))) for k in path)
    bad += count
  if not bad:
    return None
  return f'{bad} of {total} values are NaN or infinite, first in {first}'
