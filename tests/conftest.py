"""Shared pytest setup: CPU only, persistent XLA compilation cache, temporary
files under pytest's own folder."""
import os
import pathlib
import tempfile

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# One OpenBLAS thread (see experiments/train.py); before NumPy loads it.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')
# Compile-time flags for the tests (and the subprocesses they start, which
# inherit XLA_FLAGS): LLVM without optimisation passes and XLA:CPU's older
# elemental emitter compile the tiny models' steps ~2.5x faster, which halves a
# cold test run; the tiny models run a few steps, so slower code costs little.
# Every program means the same either way; HPUNET_JAX_TEST_DEFAULT_CODEGEN=1
# tests under XLA's default code generation instead (what users run).
TEST_XLA_FLAGS = ('--xla_backend_optimization_level=0',
                  '--xla_cpu_use_fusion_emitters=false')
if os.environ.get('HPUNET_JAX_TEST_DEFAULT_CODEGEN') != '1':
  os.environ['XLA_FLAGS'] = ' '.join(
      [os.environ.get('XLA_FLAGS', '')] +
      [f for f in TEST_XLA_FLAGS if f not in os.environ.get('XLA_FLAGS', '')]
  ).strip()

import jax  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

_CACHE = pathlib.Path(os.environ.get(
    'HPUNET_JAX_CACHE', pathlib.Path(__file__).resolve().parents[1] / '.jax_cache'))
jax.config.update('jax_compilation_cache_dir', str(_CACHE))
# The entry points run as subprocesses (predict, run_metrics) use it too.
os.environ['HPUNET_JAX_CACHE'] = str(_CACHE)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


@pytest.fixture(autouse=True, scope='session')
def _temporary_files_under_pytest(tmp_path_factory):
  """Sends `tempfile`'s folders of the code under test into this session's
  pytest folder (pruned by pytest), for this process and the subprocesses
  tests start (`TMPDIR`). TFDS leaves one empty `/tmp/tmp*tfds` folder per
  builder made on an unprepared data dir (`DatasetInfo.initialize_from_bucket`
  calls `tempfile.mkdtemp('tfds')`), hundreds per test run."""
  temp_dir = str(tmp_path_factory.mktemp('tempfile'))
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(tempfile, 'tempdir', temp_dir)
    patch.setenv('TMPDIR', temp_dir)
    yield
