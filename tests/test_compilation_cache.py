"""Where the entry points keep compiled XLA programs."""
import os

import jax
import pytest

from hpunet_jax.runtime import compilation_cache


@pytest.fixture(autouse=True)
def _keep_test_cache_settings(monkeypatch):
  saved = (jax.config.jax_compilation_cache_dir,
           jax.config.jax_persistent_cache_min_compile_time_secs)
  monkeypatch.delenv(compilation_cache.ENV_VAR, raising=False)
  yield
  jax.config.update('jax_compilation_cache_dir', saved[0])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', saved[1])


def test_config_directory_then_environment_then_default(tmp_path,
                                                        monkeypatch):
  assert compilation_cache.enable() == os.path.expanduser(
      '~/.cache/hpunet_jax/jax')
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 1.0
  monkeypatch.setenv(compilation_cache.ENV_VAR, str(tmp_path / 'env'))
  assert compilation_cache.enable(min_compile_time_s=0.0) == str(
      tmp_path / 'env')
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'env')
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
  assert compilation_cache.enable(str(tmp_path / 'config')) == str(
      tmp_path / 'config')
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'config')
