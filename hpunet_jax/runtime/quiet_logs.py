"""Keeps library INFO chatter out of the user's output; warnings stay.

Orbax logs some 20 INFO lines per restore (several over 1,000 characters)
and TFDS a few per data set load; they would bury the progress lines of
training, `eval.run_metrics` and `experiments.predict`. Both libraries log
through absl (the `absl` Python logger) and a few modules through their own
Python loggers, so both routes are filtered. WARNING and above always pass.
"""
import logging
import os

# Packages whose INFO and DEBUG records are dropped.
QUIETED_PACKAGES = ('orbax', 'tensorflow_datasets')
_MARKERS = tuple(f'{os.sep}{name}{os.sep}' for name in QUIETED_PACKAGES)
# Python loggers raised to WARNING: the packages' own, and JAX's backend
# probe ("Unable to initialize backend 'tpu'" on every CPU start).
QUIETED_LOGGERS = QUIETED_PACKAGES + ('jax._src.xla_bridge',)


def keep_record(record: logging.LogRecord) -> bool:
  """False for an INFO/DEBUG record logged from inside a quieted package."""
  if record.levelno >= logging.WARNING:
    return True
  return not any(marker in (record.pathname or '') for marker in _MARKERS)


class _LibraryInfoFilter(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    return keep_record(record)


_FILTER = _LibraryInfoFilter()


def quiet_libraries() -> None:
  """Installs the filter (idempotent; safe to call from every entry point)."""
  absl_logger = logging.getLogger('absl')
  if _FILTER not in absl_logger.filters:
    absl_logger.addFilter(_FILTER)
  for name in QUIETED_LOGGERS:
    library_logger = logging.getLogger(name)
    if library_logger.level < logging.WARNING:
      library_logger.setLevel(logging.WARNING)
