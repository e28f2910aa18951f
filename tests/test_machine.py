"""hpunet_jax.runtime.machine: what a result records about its CPU."""
import builtins
import io

from hpunet_jax.runtime import machine

# Two lines of a Sapphire Rapids /proc/cpuinfo, shortened.
_CPUINFO = ('processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n'
            'flags\t\t: fpu sse2 avx avx2 avx512f avx512_bf16 amx_tile\n'
            'vmx flags\t: ept\nprocessor\t: 1\nflags\t\t: fpu\n')


def _fake_cpuinfo(monkeypatch, text):
  real_open = builtins.open

  def fake_open(path, *args, **kwargs):
    if path == '/proc/cpuinfo':
      if text is None:
        raise FileNotFoundError(path)
      return io.StringIO(text)
    return real_open(path, *args, **kwargs)
  monkeypatch.setattr(builtins, 'open', fake_open)


def test_model_and_vector_features_from_the_first_processor(monkeypatch):
  _fake_cpuinfo(monkeypatch, _CPUINFO)
  assert machine.cpu_model() == 'Intel(R) Xeon(R) Processor'
  # amx_bf16 is absent; the second processor's flags are not read.
  assert machine.cpu_vector_features() == ['avx2', 'avx512f', 'avx512_bf16',
                                           'amx_tile']


def test_no_cpuinfo_gives_the_platform_and_no_features(monkeypatch):
  _fake_cpuinfo(monkeypatch, None)
  monkeypatch.setattr(machine.platform, 'processor', lambda: 'arm')
  assert machine.cpu_model() == 'arm'
  assert machine.cpu_vector_features() == []
  info = machine.machine_info()
  assert info['cpu_model'] == 'arm' and info['cpu_vector_features'] == []
  assert machine.cpu_label(info) == 'arm'
  assert machine.cpu_label({'cpu_model': 'x', 'cpu_vector_features': [
      'avx2', 'avx512f']}) == 'x avx2 avx512f'
