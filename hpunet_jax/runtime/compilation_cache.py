"""The persistent XLA compilation cache of the entry points.

`experiments.train`, `experiments.predict` and `eval.run_metrics` keep
compiled XLA programs on disk, so a second run of the same computation loads
it instead of compiling (the LIDC train step on a 2-core CPU: about 32 s to
compile, 8 s to load). JAX keys each entry by the program (source locations
included), the compile options, the backend and the jaxlib version, so a
changed model, option or source file compiles anew.
"""
import os

import jax

DEFAULT_DIR = os.path.join('~', '.cache', 'hpunet_jax', 'jax')
# Overrides DEFAULT_DIR when a config leaves `compilation_cache_dir` empty.
ENV_VAR = 'HPUNET_JAX_CACHE'


def enable(cache_dir: str = '', min_compile_time_s: float = 1.0) -> str:
  """Turns the cache on for this process; returns its directory.

  Args:
    cache_dir: `config.compilation_cache_dir`; '' = `$HPUNET_JAX_CACHE`,
      else `~/.cache/hpunet_jax/jax`.
    min_compile_time_s: programs that compile faster are not written (the
      trainer's many small programs); 0 keeps every one.
  """
  cache_dir = os.path.expanduser(
      cache_dir or os.environ.get(ENV_VAR) or DEFAULT_DIR)
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  jax.config.update('jax_persistent_cache_min_compile_time_secs',
                    min_compile_time_s)
  return cache_dir
