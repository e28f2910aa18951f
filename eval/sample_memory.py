"""Whether an evaluation's samples fit in memory, checked before sampling.

`Evaluator.run` keeps what its sampler returns for a batch of B images and
all N samples (int32 labels `[N, B, H, W]`, and for the lesion tasks each
sample's softmax) as arrays on the device and in host memory, and scores a
lesion image's N samples with GED^2 and the sample diversity over all N,
whose IoU matrices hold at least the float64 intersections and unions of
every pair (`eval.metrics.pairwise_iou`: 16 N^2 bytes). `Budget.check`
counts only these, so it is a lower bound: a count it refuses cannot run,
one it passes may still need more (the decoder's working memory).
"""
import dataclasses
import os
from typing import Optional, Sequence

import jax

# float64 intersections and unions of every pair of samples (lesion tasks).
PAIR_BYTES = 16


class SampleMemoryError(ValueError):
  """The samples asked for cannot fit in memory (the message says how many
  can)."""


def _gib(num_bytes: int) -> str:
  return f'{num_bytes / 2**30:.1f} GiB'


def host_available_bytes() -> Optional[int]:
  """The host's available memory (`MemAvailable`), None when unknown."""
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  try:
    return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  except (ValueError, OSError, AttributeError):
    return None


def device_free_bytes() -> Optional[int]:
  """Free memory of the accelerator the samples are drawn on; None on the
  CPU (host memory) or when it does not say."""
  device = jax.local_devices()[0]
  if device.platform == 'cpu':
    return None
  stats = device.memory_stats() or {}
  if 'bytes_limit' not in stats:
    return None
  return int(stats['bytes_limit']) - int(stats.get('bytes_in_use', 0))


@dataclasses.dataclass(frozen=True)
class Budget:
  """What one batch of an evaluation keeps, against what is free.

  Attributes:
    sample_bytes: bytes the sampler returns per sample for the whole batch
      (`sampled_bytes_per_sample`).
    batch_size: images sampled at once (B), for the message.
    image_hw: (H, W) of the evaluated images, for the message.
    lesions: a lesion task (GED^2 over all N samples).
    host_bytes: free host memory (None: not checked).
    device_bytes: free accelerator memory (None: none, or not checked).
  """
  sample_bytes: int
  batch_size: int
  image_hw: Sequence[int]
  lesions: bool
  host_bytes: Optional[int]
  device_bytes: Optional[int] = None

  def sampled_bytes(self, num_samples: int) -> int:
    """The batch's samples, as the sampler returns them."""
    return num_samples * self.sample_bytes

  def host_needed_bytes(self, num_samples: int) -> int:
    """The host copy of the samples and, for lesions, the pair matrices."""
    pairs = PAIR_BYTES * num_samples**2 if self.lesions else 0
    return self.sampled_bytes(num_samples) + pairs

  def fits(self, num_samples: int) -> bool:
    host_ok = (self.host_bytes is None
               or self.host_needed_bytes(num_samples) <= self.host_bytes)
    device_ok = (self.device_bytes is None
                 or self.sampled_bytes(num_samples) <= self.device_bytes)
    return host_ok and device_ok

  def largest_fitting(self) -> int:
    """The largest sample count that `fits` (0 if not even one)."""
    low, high = 0, 1
    while self.fits(high):
      low, high = high, 2 * high
    while high - low > 1:  # fits(low) and not fits(high).
      middle = (low + high) // 2
      low, high = (middle, high) if self.fits(middle) else (low, middle)
    return low

  def check(self, num_samples: int) -> None:
    """Raises SampleMemoryError unless `num_samples` samples `fits`."""
    if self.fits(num_samples):
      return
    height, width = self.image_hw
    what = (f'{self.batch_size} images of {height}x{width} sampled at once'
            + (f' and the {num_samples} x {num_samples} IoU matrices of '
               'GED^2' if self.lesions else ''))
    if (self.device_bytes is not None
        and self.sampled_bytes(num_samples) > self.device_bytes):
      needed, free = self.sampled_bytes(num_samples), self.device_bytes
      where = 'accelerator memory'
    else:
      needed, free = self.host_needed_bytes(num_samples), self.host_bytes
      where = 'memory'
    raise SampleMemoryError(
        f'{num_samples} samples per image need at least {_gib(needed)} of '
        f'{where} ({what}), {_gib(free)} is free: at most '
        f'{self.largest_fitting()} samples per image fit.')


def sampled_bytes_per_sample(sample_fn, *args) -> int:
  """Bytes per sample of what `sample_fn(*args, num_samples)` returns,
  from its shapes at 1 and 2 samples (traced, not run).

  `sample_fn` is a `jax.jit` function with `num_samples` static; its own
  `eval_shape` traces it as the top-level jit (wrapping it in another
  function would make it a nested jit, which may not carry compile options).
  """
  def total(num_samples):
    shapes = sample_fn.eval_shape(*args, num_samples)
    return sum(s.size * s.dtype.itemsize for s in jax.tree.leaves(shapes))
  return total(2) - total(1)


def budget(sample_bytes: int, batch_size: int, image_hw: Sequence[int],
           lesions: bool) -> Budget:
  """The `Budget` of this machine now."""
  return Budget(int(sample_bytes), batch_size,
                tuple(int(s) for s in image_hw), lesions,
                host_available_bytes(), device_free_bytes())
