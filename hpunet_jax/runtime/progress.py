"""One progress report for every long step: counts, rate and time left.

Data set generation, compilation, evaluation, clustering and figure writing
all report through `Progress` (training has its own per-step line in
`metric_writers`, which uses `format_duration` and the same steady-state
rule). Where stderr is a terminal a tqdm bar is drawn; elsewhere (CI, log
files, pytest) it writes absl INFO lines, at most one every
`LOG_EVERY_SECONDS` plus the first and the last, e.g.

  evaluating synthetic_lesions:test: 40/200 images (20%), 1.31 images/s,
  131 samples/s, ETA 0:02:02

The first `warmup_items` items of a `Progress` (e.g. the first batch, whose
time holds the compilation) are reported on their own line with their time,
and the rate and the ETA are measured from their end (the steady state).
"""
import contextlib
import datetime
import sys
import time
from typing import Iterator, Mapping, Optional

from absl import logging

# Seconds between two progress lines on a non-terminal: frequent enough that
# no stretch of a run is silent for long, rare enough to keep logs short.
LOG_EVERY_SECONDS = 5.0


def format_duration(seconds: float) -> str:
  """`0:02:05` for 125.3 s (hours:minutes:seconds, rounded)."""
  return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


def _use_tqdm() -> bool:
  """A bar only on an interactive terminal; logs and CI stay line-based."""
  try:
    import tqdm  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return sys.stderr is not None and sys.stderr.isatty()


class Progress:
  """Counts done of `total` items; logs counts, rate and ETA.

  Usage:
    with Progress('evaluating test', total=200, unit='images',
                  per_item={'samples': 100}, warmup_items=8) as bar:
      for batch in batches:
        ...
        bar.update(len(batch))
  """

  def __init__(self, what: str, total: Optional[int] = None,
               unit: str = 'items', *,
               per_item: Optional[Mapping[str, float]] = None,
               warmup_items: int = 0,
               every_seconds: Optional[float] = None,
               warmup_label: str = 'compiling and running the first batch',
               use_tqdm: Optional[bool] = None):
    """Starts the clock and announces the step.

    Args:
      what: what is being done, e.g. 'evaluating synthetic_lesions:test'.
      total: number of items, or None when unknown (no percentage, no ETA).
      unit: plural name of an item, e.g. 'images', 'examples'.
      per_item: further rates to report, unit -> count per item (e.g.
        `{'samples': 100}` for 100 samples per image).
      warmup_items: the first this many items include compilation: report
        their time separately and leave it out of the rate and the ETA
        (0 = no warm-up).
      every_seconds: least time between two lines (non-terminal output);
        None = `LOG_EVERY_SECONDS`.
      warmup_label: what the warm-up is doing (logged before it).
      use_tqdm: force (True) or forbid (False) a tqdm bar; None = a bar only
        when stderr is a terminal.
    """
    self.what, self.total, self.unit = what, total, unit
    self.per_item = dict(per_item or {})
    self.warmup_items = warmup_items
    self.every_seconds = (LOG_EVERY_SECONDS if every_seconds is None
                          else every_seconds)
    self.count = 0
    self._start = time.monotonic()
    self._steady_start: Optional[float] = None
    self._steady_count = 0
    self._last_line = self._start  # The first line after `every_seconds`.
    self._closed = False
    self._bar = None
    if use_tqdm if use_tqdm is not None else _use_tqdm():
      import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm.tqdm(total=total, unit=f' {unit}', desc=what,
                            file=sys.stderr, dynamic_ncols=True)
    else:
      total_text = f'{total} {unit}' if total is not None else unit
      suffix = f' ({warmup_label} ...)' if warmup_items else ''
      logging.info('%s: %s%s', what, total_text, suffix)

  def rate(self) -> Optional[float]:
    """Items per second in the steady state (None before it is known)."""
    if self._steady_start is None:
      return None
    elapsed = time.monotonic() - self._steady_start
    if self._steady_count <= 0 or elapsed <= 0:
      return None
    return self._steady_count / elapsed

  def eta_seconds(self) -> Optional[float]:
    """Seconds left at the steady rate; None when unknown."""
    rate = self.rate()
    if rate is None or self.total is None:
      return None
    return max(self.total - self.count, 0) / rate

  def line(self) -> str:
    """The current progress line (without the leading `what`)."""
    parts = []
    if self.total:
      parts.append(f'{self.count}/{self.total} {self.unit} '
                   f'({100.0 * self.count / self.total:.0f}%)')
    else:
      parts.append(f'{self.count} {self.unit}')
    rate = self.rate()
    if rate is not None:
      parts.append(f'{rate:.3g} {self.unit}/s')
      parts.extend(f'{rate * factor:.3g} {name}/s'
                   for name, factor in self.per_item.items())
    eta = self.eta_seconds()
    if eta is not None and self.count < (self.total or 0):
      parts.append(f'ETA {format_duration(eta)}')
    parts.append(f'elapsed {format_duration(time.monotonic() - self._start)}')
    return ', '.join(parts)

  def update(self, n: int = 1) -> None:
    """Marks `n` more items done; logs when a line is due."""
    now = time.monotonic()
    in_warmup = self.count < self.warmup_items
    self.count += n
    warmup_done = in_warmup and self.count >= self.warmup_items
    if in_warmup:  # The steady state starts when the warm-up is done.
      if warmup_done:
        self._steady_start, self._steady_count = now, 0
    else:
      if self._steady_start is None:
        self._steady_start = self._start
      self._steady_count += n
    if self._bar is not None:
      self._bar.update(n)
      return
    finished = self.total is not None and self.count >= self.total
    if warmup_done:
      logging.info('%s: first %d %s done in %.1f s (compilation included)',
                   self.what, self.count, self.unit, now - self._start)
      self._last_line = now
    elif in_warmup:
      return  # No rate yet; the warm-up's own line comes at its end.
    elif now - self._last_line >= self.every_seconds and not finished:
      logging.info('%s: %s', self.what, self.line())
      self._last_line = now

  def close(self) -> float:
    """Ends the report; returns the seconds it took."""
    elapsed = time.monotonic() - self._start
    if self._closed:
      return elapsed
    self._closed = True
    if self._bar is not None:
      self._bar.close()
    else:
      logging.info('%s: done, %s', self.what, self.line())
    return elapsed

  def __enter__(self) -> 'Progress':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


@contextlib.contextmanager
def timed(what: str) -> Iterator[None]:
  """Logs `what ...` before a single long step and its time after it.

  For steps without a count (compiling the train step, building the
  model): `with timed('compiling the train step'): ...`.
  """
  start = time.monotonic()
  logging.info('%s ...', what)
  yield
  logging.info('%s: done in %.1f s', what, time.monotonic() - start)
