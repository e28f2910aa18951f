"""One trainer per workdir: a lock file naming its holder.

`<workdir>/trainer.lock` holds `{"host", "pid", "started"}` of the process
training there. The lock itself is an exclusive `fcntl.flock` on that file:
the kernel drops it when the holder exits in any way (also SIGKILL), so a
lock left by a dead run is never in the way. Where the file system offers no
`flock` (some network mounts), the file's content decides: a holder on this
host whose pid is gone is stale and taken over (with a warning); a holder on
another host cannot be checked and is respected, the error says which file
to delete if that run is dead.

The file stays after a clean exit, emptied, so that two runs starting at once
never lock two different files of the same name.

`SettingsLock` serialises shorter jobs on one output (an evaluation folder,
a data set build): the second waits for the first, and the lock file is
removed on release (a waiter that locked a removed file tries again).
`process_alive` tells whether a (host, pid) that left a temporary folder may
still be writing it.
"""
import errno
import fcntl
import json
import os
import socket
import time
from typing import Optional

from absl import logging

LOCK_FILE = 'trainer.lock'


class WorkdirError(RuntimeError):
  """The workdir cannot hold a run (a file, or not writable)."""


class WorkdirLockedError(WorkdirError):
  """Another process trains in the same workdir."""


def _holder_text(holder: Optional[dict]) -> str:
  if not holder:
    return 'an unknown process'
  started = holder.get('started')
  since = (time.strftime(' since %Y-%m-%d %H:%M:%S', time.localtime(started))
           if isinstance(started, (int, float)) else '')
  return f"pid {holder.get('pid')} on host {holder.get('host')}{since}"


def _pid_alive(pid: int) -> bool:
  if pid <= 0:  # 0 and negative pids name process groups: not a process.
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Exists, owned by someone else.
    return True
  return True


def process_alive(host: Optional[str], pid: int) -> bool:
  """Whether process `pid` of `host` (None = this host) may still run: a
  process on another host cannot be checked and counts as alive."""
  if host is not None and host != socket.gethostname():
    return True
  return _pid_alive(pid)


def read_holder(path: str) -> Optional[dict]:
  """The holder a lock file names (host, pid, start), or None when the file
  is missing, empty or unreadable."""
  try:
    with open(path) as f:
      text = f.read()
    return json.loads(text) if text.strip() else None
  except (OSError, ValueError):
    return None


class WorkdirLock:
  """Context manager holding `<workdir>/trainer.lock` while a run trains.

  Raises `WorkdirLockedError` on entry, naming the holder, when another
  process holds it.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(os.fspath(workdir), LOCK_FILE)
    self._fd = None

  def _read_holder(self) -> Optional[dict]:
    return read_holder(self.path)

  def _locked_error(self, holder: Optional[dict], extra: str = ''
                    ) -> WorkdirLockedError:
    return WorkdirLockedError(
        f'{os.path.dirname(self.path)} is in use by another trainer '
        f'({_holder_text(holder)}, lock file {self.path}); wait for it to '
        f'finish or use another --workdir.{extra}')

  def _check_content_lock(self) -> None:
    """Fallback without flock: decide from the holder the file names."""
    holder = self._read_holder()
    if not holder or holder.get('pid') == os.getpid():
      return
    if holder.get('host') != socket.gethostname():
      raise self._locked_error(
          holder, f' If that run is dead, delete {self.path}.')
    if _pid_alive(int(holder.get('pid', -1))):
      raise self._locked_error(holder)
    logging.warning('Taking over the stale lock %s of %s (no such process).',
                    self.path, _holder_text(holder))

  def acquire(self) -> None:
    workdir = os.path.dirname(self.path)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
      raise WorkdirError(f'workdir {workdir} is a file, not a folder.')
    try:
      os.makedirs(workdir, exist_ok=True)
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise WorkdirError(f'cannot write to workdir {workdir}: '
                         f'{e.strerror}.') from None
    previous = self._read_holder()
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        os.close(fd)
        raise self._locked_error(self._read_holder()) from None
      # No flock on this file system: fall back to the recorded holder.
      try:
        self._check_content_lock()
      except WorkdirLockedError:
        os.close(fd)
        raise
      previous = None  # Warned there.
    if previous:  # The last holder did not release: it was killed.
      logging.warning('%s was left by %s, which is gone; taking it.',
                      self.path, _holder_text(previous))
    holder = dict(host=socket.gethostname(), pid=os.getpid(),
                  started=time.time())
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    os.fsync(fd)
    self._fd = fd

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      os.ftruncate(self._fd, 0)  # Empty = released cleanly.
      fcntl.flock(self._fd, fcntl.LOCK_UN)
    except OSError:
      pass  # Closing releases it anyway.
    os.close(self._fd)
    self._fd = None

  def __enter__(self) -> 'WorkdirLock':
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


class SettingsLock:
  """An exclusive `flock` on `path` held while one job writes an output.

  `acquire(wait=True)` waits (logging once who holds it) for another
  process holding it; `acquire(wait=False)` returns False instead. Both
  return False where the file system offers no `flock` (`unsupported` is
  then set): callers go on unlocked and must not rely on it. Release
  removes the file, so no lock files are left behind.
  """

  def __init__(self, path: str, what: str):
    """`what` completes 'waiting for pid N to finish ...', e.g. 'an
    evaluation with the same settings'."""
    self.path = os.fspath(path)
    self.what = what
    self.unsupported = False
    self._fd = None

  def _read_holder(self) -> Optional[dict]:
    return read_holder(self.path)

  def acquire(self, wait: bool = True) -> bool:
    os.makedirs(os.path.dirname(self.path) or '.', exist_ok=True)
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
          os.close(fd)
          self.unsupported = True
          return False
        if not wait:
          os.close(fd)
          return False
        logging.warning('Waiting for %s to finish %s (lock file %s).',
                        _holder_text(self._read_holder()), self.what,
                        self.path)
        fcntl.flock(fd, fcntl.LOCK_EX)
      # The holder removes the file on release: a file we opened before
      # that is no longer the lock; open the current one.
      try:
        current = os.stat(self.path)
        locked = os.fstat(fd)
        same = (current.st_ino, current.st_dev) == (locked.st_ino,
                                                      locked.st_dev)
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    holder = dict(host=socket.gethostname(), pid=os.getpid(),
                  started=time.time())
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    self._fd = fd
    return True

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      os.remove(self.path)  # Still ours: removed before unlocking.
    except OSError:
      pass
    os.close(self._fd)  # Closing drops the flock.
    self._fd = None

  def __enter__(self) -> 'SettingsLock':
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()
