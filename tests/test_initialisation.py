"""The host-side init (`hpunet_jax.initialisation`) against Haiku's own."""
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import lidc
from hpunet_jax import initialisation
from hpunet_jax import models


def _model_and_inputs(arg):
  config = lidc.get_config(arg)
  model = models.make_model(config.model_type, config.model.to_dict())
  height, width = config.image_size
  image = jnp.zeros((1, height, width, config.model.num_input_channels))
  segmentation = jnp.zeros((1, height, width), jnp.int32)
  return model, image, segmentation


def _haiku_draw(init, shape, seed=0):
  return np.asarray(jax.jit(hk.transform(lambda: init(shape, jnp.float32)).apply)(
      {}, jax.random.PRNGKey(seed)))


def _host_draw(init, shape, seed=0):
  spec = initialisation.ParamSpec('m', 'w', shape, np.dtype(np.float32), init)
  return initialisation.host_value(np.random.default_rng(seed), spec)


@pytest.mark.parametrize('arg', ['tiny', 'spunet,tiny'])
def test_same_tree_shapes_and_dtypes_as_haiku(arg):
  model, image, segmentation = _model_and_inputs(arg)
  rng = jax.random.PRNGKey(3)
  params = model.init(rng, image, segmentation)
  reference = jax.eval_shape(model.init_in_graph, rng, image, segmentation)
  assert jax.tree.structure(params) == jax.tree.structure(reference)
  assert (jax.tree.map(lambda a: (a.shape, a.dtype), params)
          == jax.tree.map(lambda a: (a.shape, a.dtype), reference))


def test_hpunet_kernels_orthogonal_biases_truncated_normal():
  model, image, segmentation = _model_and_inputs('tiny')
  params = model.init(jax.random.PRNGKey(0), image, segmentation)
  biases = []
  for module, leaves in params.items():
    kernel = np.asarray(leaves['w'], np.float64)
    # Haiku's view: C_out rows of kh * kw * C_in, orthonormal on the
    # shorter side.
    matrix = np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1)
    gram = matrix @ matrix.T if matrix.shape[0] <= matrix.shape[1] else (
        matrix.T @ matrix)
    np.testing.assert_allclose(gram, np.eye(len(gram)), atol=2e-6,
                               err_msg=module)
    biases.append(np.asarray(leaves['b']).ravel())
  biases = np.concatenate(biases)
  assert np.all(np.abs(biases) <= 0.002)  # Truncated at 2 stddevs.
  # stddev 0.001 truncated at +-2: std 0.00088.
  assert abs(biases.std() / 0.00088 - 1) < 0.15, biases.std()


def test_deterministic_per_key_and_jittable():
  model, image, segmentation = _model_and_inputs('tiny')
  rng = jax.random.PRNGKey(5)
  eager = model.init(rng, image, segmentation)
  jitted = jax.jit(model.init)(rng, image, segmentation)
  typed = model.init(jax.random.wrap_key_data(rng), image, segmentation)
  other = model.init(jax.random.PRNGKey(6), image, segmentation)
  for a, b, c, d in zip(*map(jax.tree.leaves, (eager, jitted, typed, other))):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a, d)


@pytest.mark.parametrize('init', [
    hk.initializers.Orthogonal(scale=1.0),
    hk.initializers.Orthogonal(scale=2.0, axis=0),
    hk.initializers.TruncatedNormal(stddev=0.001),
    hk.initializers.RandomNormal(stddev=0.5, mean=1.0),
    hk.initializers.RandomUniform(minval=-1.0, maxval=3.0),
    hk.initializers.VarianceScaling(2.0, 'fan_in', 'truncated_normal'),
    hk.initializers.VarianceScaling(1.0, 'fan_avg', 'uniform'),
    hk.initializers.VarianceScaling(1.0, 'fan_out', 'normal'),
], ids=['orthogonal', 'orthogonal_scale2_axis0', 'truncated_normal',
        'normal', 'uniform', 'he_truncated_normal', 'glorot_uniform',
        'fan_out_normal'])  # Stable ids: pytest-xdist workers compare them.
@pytest.mark.parametrize('shape', [(3, 3, 16, 32), (256, 40)])
def test_host_draws_match_haiku_in_distribution(init, shape):
  host, haiku = _host_draw(init, shape), _haiku_draw(init, shape)
  assert host.shape == haiku.shape and host.dtype == haiku.dtype
  np.testing.assert_allclose(host.std(), haiku.std(), rtol=0.06)
  np.testing.assert_allclose(host.mean(), haiku.mean(),
                             atol=0.06 * haiku.std())
  np.testing.assert_allclose([host.min(), host.max()],
                             [haiku.min(), haiku.max()],
                             rtol=0.35, atol=0.35 * haiku.std())


def test_orthogonal_is_haar_not_lapack_signed():
  # Without the sign(diag(R)) correction LAPACK's Q has a biased diagonal.
  corner = [_host_draw(hk.initializers.Orthogonal(), (4, 4), seed)[0, 0]
            for seed in range(300)]
  assert abs(np.mean(corner)) < 0.12
  np.testing.assert_allclose(np.var(corner), 1 / 4, rtol=0.25)


def test_other_initialisers_run_as_haiku_would():
  def plain_init(shape, dtype):  # Not a Haiku class: run in the graph.
    return 0.5 * jax.random.normal(hk.next_rng_key(), shape, dtype)

  def forward(x):
    w = hk.get_parameter('w', (2, 3), init=plain_init)
    c = hk.get_parameter('c', (3,), init=hk.initializers.Constant(0.25))
    return x @ w + c

  rng = jax.random.PRNGKey(1)
  x = jnp.ones((1, 2))
  params = initialisation.host_init(forward)(rng, x)
  haiku_params = jax.eval_shape(hk.transform(forward).init, rng, x)
  assert jax.tree.structure(params) == jax.tree.structure(haiku_params)
  np.testing.assert_array_equal(params['~']['c'], np.full(3, 0.25))
  expected_w = hk.transform(lambda: plain_init((2, 3), jnp.float32)).apply(
      {}, jax.random.fold_in(rng, 0))
  np.testing.assert_array_equal(params['~']['w'], expected_w)
