"""`host_memory.retain_freed_memory`: freed blocks are reused without page
faults, on the main thread and on other threads; a user's own malloc
settings are left alone. Each case runs in a fresh interpreter, since glibc's
arena limit only applies to threads that have not allocated yet."""
import json
import os
import subprocess
import sys

import pytest

from hpunet_jax.runtime import host_memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Allocates, fills and frees a 64 MiB block twice, in the main thread and in a
# new thread, and reports the minor page faults of the second round (the
# first round maps the memory in either case).
_PROBE = r'''
import ctypes, json, resource, sys, threading
from hpunet_jax.runtime import host_memory
outcome = (host_memory.retain_freed_memory() if sys.argv[1] == 'retain'
           else host_memory.current_setting())
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
SIZE = 64 << 20

def touch():
  block = libc.malloc(SIZE)
  ctypes.memset(block, 1, SIZE)
  libc.free(block)

def second_round_faults(out, key):
  touch()
  before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
  touch()
  out[key] = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before

faults = {}
second_round_faults(faults, 'main')
thread = threading.Thread(target=second_round_faults, args=(faults, 'thread'))
thread.start()
thread.join()
print(json.dumps(dict(faults, outcome=outcome)))
'''

_PAGES = (64 << 20) // os.sysconf('SC_PAGE_SIZE')


def _probe(mode, **env_extra):
  env = {k: v for k, v in os.environ.items()
         if k not in host_memory.USER_MALLOC_VARIABLES}
  env.update(env_extra, PYTHONPATH=REPO)
  result = subprocess.run([sys.executable, '-c', _PROBE, mode], env=env,
                          capture_output=True, text=True, timeout=60,
                          check=True)
  return json.loads(result.stdout)


def _is_glibc():
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    ctypes.CDLL(None).gnu_get_libc_version  # pylint: disable=expression-not-assigned
    return sys.platform.startswith('linux')
  except (OSError, AttributeError):
    return False


glibc_only = pytest.mark.skipif(not _is_glibc(), reason='needs glibc')


@glibc_only
def test_defaults_fault_a_freed_block_back_in():
  # The behaviour the settings remove: glibc unmaps a freed 64 MiB block.
  faults = _probe('defaults')
  assert faults['outcome'].startswith('glibc defaults')
  assert faults['main'] > _PAGES // 2
  assert faults['thread'] > _PAGES // 2


@glibc_only
def test_retained_memory_is_reused_without_faults():
  faults = _probe('retain')
  assert faults['outcome'] == 'set'
  assert faults['main'] < _PAGES // 20
  assert faults['thread'] < _PAGES // 20


@glibc_only
def test_a_users_malloc_setting_is_left_alone():
  faults = _probe('retain', MALLOC_ARENA_MAX='4')
  assert faults['outcome'] == 'left as set by MALLOC_ARENA_MAX'
  assert faults['main'] > _PAGES // 2


def test_other_platforms_are_left_alone(monkeypatch):
  monkeypatch.setattr(host_memory, '_outcome', host_memory.current_setting())
  for name in host_memory.USER_MALLOC_VARIABLES:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(sys, 'platform', 'darwin')
  assert host_memory.retain_freed_memory() == 'not glibc (darwin)'
  assert host_memory.current_setting() == 'not glibc (darwin)'
