"""The guarded XLA:CPU compile options of the trainer and the evaluator."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpunet_jax.runtime import xla_options


@pytest.fixture(autouse=True)
def _fresh_probe():
  xla_options._cpu_accepts_eigen_conv.cache_clear()
  yield
  xla_options._cpu_accepts_eigen_conv.cache_clear()


def test_off_means_no_options():
  assert xla_options.jit_kwargs(False) == {}


def test_on_cpu_options_compile_and_match_default():
  kwargs = xla_options.jit_kwargs(True)
  if jax.default_backend() == 'cpu':
    assert kwargs == {'compiler_options': xla_options.EIGEN_CONV}
  else:
    assert kwargs == {}

  def conv(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 8))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 8, 12))
  expected = jax.jit(conv)(x, w)
  got = jax.jit(conv, **kwargs)(x, w)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
  grads = jax.jit(jax.grad(lambda w: jnp.sum(conv(x, w) ** 2)), **kwargs)(w)
  np.testing.assert_allclose(
      grads, jax.grad(lambda w: jnp.sum(conv(x, w) ** 2))(w), rtol=1e-4,
      atol=1e-3)


def test_unknown_option_is_dropped_not_raised(monkeypatch):
  """A jaxlib without the option: the jit compiles as before."""
  monkeypatch.setattr(xla_options, 'EIGEN_CONV',
                      {'xla_cpu_no_such_option_in_any_jaxlib': 'x'})
  assert xla_options.jit_kwargs(True) == {}


def test_other_backends_get_no_options(monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: 'tpu')
  assert xla_options.jit_kwargs(True) == {}
