"""What machine a result was measured on (for results files and logs)."""
import os
import platform
from typing import Any, Dict, List

import jax


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo, else `platform.processor()`)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:  # Not Linux: fall back below.
    pass
  return platform.processor() or 'unknown'


# Vector extensions that change XLA:CPU's kernels (a generic model name such
# as "Intel(R) Xeon(R) Processor" does not tell AVX2 from AVX-512/AMX).
VECTOR_FEATURES = ('avx2', 'avx512f', 'avx512_bf16', 'amx_tile', 'amx_bf16')


def cpu_vector_features() -> List[str]:
  """Which of `VECTOR_FEATURES` the CPU has (/proc/cpuinfo; [] elsewhere)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('flags'):
          flags = set(line.split(':', 1)[1].split())
          return [name for name in VECTOR_FEATURES if name in flags]
  except OSError:
    pass
  return []


def machine_info() -> Dict[str, Any]:
  """CPU model and vector features, core count, platform and JAX devices
  of this machine."""
  return {'cpu_model': cpu_model(),
          'cpu_vector_features': cpu_vector_features(),
          'cpu_cores': os.cpu_count(),
          'platform': platform.platform(),
          'jax_devices': [str(d) for d in jax.devices()],
          'jax_version': jax.__version__}
