"""What machine a result was measured on (for results files and logs)."""
import os
import platform
from typing import Any, Dict, List, Optional

import jax


def _cpuinfo(key: str) -> Optional[str]:
  """The first `key : value` line's value in /proc/cpuinfo (None if absent
  or not Linux)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith(key):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return None


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo, else `platform.processor()`)."""
  return _cpuinfo('model name') or platform.processor() or 'unknown'


# Vector extensions that change XLA:CPU's kernels (a generic model name such
# as "Intel(R) Xeon(R) Processor" does not tell AVX2 from AVX-512/AMX).
VECTOR_FEATURES = ('avx2', 'avx512f', 'avx512_bf16', 'amx_tile', 'amx_bf16')


def cpu_vector_features() -> List[str]:
  """Which of `VECTOR_FEATURES` the CPU has ([] where it does not say)."""
  flags = set((_cpuinfo('flags') or '').split())
  return [name for name in VECTOR_FEATURES if name in flags]


def cpu_label(info: Dict[str, Any]) -> str:
  """`machine_info()`'s CPU in one string: the model and its vector
  features (records written before the features were kept have none)."""
  return ' '.join([info['cpu_model']] + list(info.get('cpu_vector_features',
                                                     ())))


def machine_info() -> Dict[str, Any]:
  """CPU model and vector features, core count, platform and JAX devices
  of this machine."""
  return {'cpu_model': cpu_model(),
          'cpu_vector_features': cpu_vector_features(),
          'cpu_cores': os.cpu_count(),
          'platform': platform.platform(),
          'jax_devices': [str(d) for d in jax.devices()],
          'jax_version': jax.__version__}
