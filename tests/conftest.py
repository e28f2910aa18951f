"""Shared pytest setup: CPU only, persistent XLA compilation cache."""
import os
import pathlib

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# One OpenBLAS thread (see experiments/train.py); before NumPy loads it.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import jax  # pylint: disable=g-import-not-at-top

_CACHE = pathlib.Path(os.environ.get(
    'HPUNET_JAX_CACHE', pathlib.Path(__file__).resolve().parents[1] / '.jax_cache'))
jax.config.update('jax_compilation_cache_dir', str(_CACHE))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
