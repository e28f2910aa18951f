"""What machine a result was measured on (for results files and logs)."""
import os
import platform
from typing import Any, Dict

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


def machine_info() -> Dict[str, Any]:
  """CPU model, core count, platform and JAX devices of this machine."""
  return {'cpu_model': cpu_model(), 'cpu_cores': os.cpu_count(),
          'platform': platform.platform(),
          'jax_devices': [str(d) for d in jax.devices()],
          'jax_version': jax.__version__}
