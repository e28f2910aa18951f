"""glibc malloc settings that let an XLA:CPU step reuse its freed memory.

XLA:CPU allocates a step's temporaries (about 1.1 GiB for the LIDC train step
at batch 8) and Eigen's convolution packing buffers afresh on every call.
glibc's defaults hand such memory back to the kernel when it is freed: blocks
over the mmap threshold are unmapped, and each worker thread's 64 MiB heap is
unmapped once empty. So every step faults its memory back in, a zeroed page
at a time (about 95,000 page faults a second in the LIDC train step on a
2-core CPU).
`retain_freed_memory` makes glibc keep freed memory mapped for the next step:
one arena for all threads, no mmap for large blocks, no trimming. The price is
that the process keeps its peak memory until it exits, which a trainer reaches
on its first step anyway. Measured in
`benchmarks/notes/2026-12-02-host-memory-reuse.md`: the LIDC train step
1.25-1.37x faster, but the evaluator 15 % slower (its threads then share one
arena), so only `experiments.train` calls it, before JAX starts its threads.
It changes nothing but where memory comes from.
"""
import ctypes
import ctypes.util
import os
import sys

# mallopt(3) parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

# Environment variables through which a user sets glibc's malloc; if any is
# set, their choice stands.
USER_MALLOC_VARIABLES = ('GLIBC_TUNABLES', 'MALLOC_ARENA_MAX',
                         'MALLOC_MMAP_MAX_', 'MALLOC_TRIM_THRESHOLD_',
                         'MALLOC_MMAP_THRESHOLD_', 'MALLOC_TOP_PAD_')

# What `mallopt` is given: (parameter, value). -1 disables trimming (man 3
# mallopt), 0 disables mmap for large requests.
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))

# The outcome of this process's last `retain_freed_memory` call, for reports
# (`current_setting`); the settings themselves live in glibc.
_outcome = 'glibc defaults (retain_freed_memory not called)'


def retain_freed_memory() -> str:
  """Applies `SETTINGS` with glibc's `mallopt`, unless not possible or the
  user set glibc's malloc through the environment.

  Call it before JAX runs anything (its worker threads take their arenas when
  they first allocate).

  Returns:
    What happened: 'set', or why nothing was changed.
  """
  global _outcome
  _outcome = _apply_settings()
  return _outcome


def current_setting() -> str:
  """What `retain_freed_memory` did in this process ('set', why not, or
  that it was not called)."""
  return _outcome


def _apply_settings() -> str:
  user_set = [name for name in USER_MALLOC_VARIABLES if name in os.environ]
  if user_set:
    return f'left as set by {", ".join(user_set)}'
  if not sys.platform.startswith('linux'):
    return f'not glibc ({sys.platform})'
  libc_name = ctypes.util.find_library('c')
  try:
    libc = ctypes.CDLL(libc_name)
    mallopt = libc.mallopt
    libc.gnu_get_libc_version  # Only glibc has it (not musl).
  except (OSError, AttributeError, TypeError):
    return f'not glibc ({libc_name})'
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  mallopt.restype = ctypes.c_int
  refused = [parameter for parameter, value in SETTINGS
             if mallopt(parameter, value) != 1]
  if refused:
    return f'mallopt refused parameters {refused}'
  return 'set'
