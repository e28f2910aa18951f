"""XLA compile options the trainer and the evaluator pass to `jax.jit`.

jaxlib 0.10's XLA:CPU runs convolutions through YNNPACK by default. Running
them on XLA's Eigen kernels instead makes the LIDC-size training step 27 %
faster and 100 samples of a 128x128 image 1.5-1.8x faster on this project's
2-core CPU (`benchmarks/README.md`); at 64x64 it is neutral. The option that
selects this is experimental: jaxlibs that do not know it make `jax.jit`
raise `No such compile option`, so it is passed only on a CPU backend whose
jaxlib accepts it, and nowhere else (GPU/TPU compile unchanged).
"""
import functools
from typing import Any, Dict

import jax
import jax.numpy as jnp

# Convolutions on Eigen; YNNPACK keeps the dots and reductions it is faster
# at. Equivalent to
#   XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution
# but set per jit, so it cannot abort a process whose jaxlib lacks it.
EIGEN_CONV = {'xla_cpu_experimental_ynn_fusion_type':
              'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,'
              'LIBRARY_FUSION_TYPE_REDUCE'}


@functools.lru_cache(maxsize=None)
def _cpu_accepts_eigen_conv() -> bool:
  """Whether the default backend is CPU and compiles with `EIGEN_CONV`."""
  if jax.default_backend() != 'cpu':
    return False
  try:
    jax.jit(jnp.negative, compiler_options=EIGEN_CONV).lower(
        jnp.zeros((2,), jnp.float32)).compile()
  except Exception:  # pylint: disable=broad-except
    # jaxlib versions raise different types for an unknown option.
    return False
  return True


def jit_kwargs(eigen_conv: bool) -> Dict[str, Any]:
  """Extra `jax.jit` kwargs: `{'compiler_options': EIGEN_CONV}` when asked
  for and supported here, else `{}`.

  Args:
    eigen_conv: `config.xla_cpu_eigen_conv`.
  """
  if eigen_conv and _cpu_accepts_eigen_conv():
    return {'compiler_options': dict(EIGEN_CONV)}
  return {}
