"""Fast parameter initialisation: the parameters drawn on the host.

Haiku's init draws every parameter in the graph: one threefry random draw per
parameter plus, for `hk.initializers.Orthogonal`, a QR that XLA expands into
Householder loops. Jitted for the LIDC model that is a graph of hundreds of
draws and QRs that compiles for minutes; run op by op it runs the whole
network op by op. `host_init` instead

1. traces the Haiku init abstractly (`jax.eval_shape`, no compilation),
   recording each parameter's name, shape, dtype and declared initialiser;
2. draws the parameters of the initialisers it knows (`Orthogonal`,
   `TruncatedNormal`, `RandomNormal`, `RandomUniform`, `VarianceScaling`,
   `Constant`) in one host pass (`jax.pure_callback`), NumPy generators
   seeded from the PRNG key, orthogonal matrices by a SciPy QR;
3. runs any other initialiser (e.g. a plain function) as Haiku would, in the
   graph, on its own key `fold_in(rng, index)`.

Same tree, shapes, dtypes and distributions as Haiku's init (checked in
tests/test_initialisation.py), but not the same values: the random numbers
come from NumPy, not threefry. The result is a deterministic function of the
key, traceable (`jax.jit`, `jax.eval_shape`) and identical on every process.
"""
from typing import Any, Callable, List, NamedTuple, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

# `hk.initializers.VarianceScaling`'s truncated-normal correction:
# scipy.stats.truncnorm.std(a=-2, b=2), the constant Haiku uses.
_TRUNCATED_STD = .87962566103423978

_HOST_INITIALISERS = (hk.initializers.Orthogonal,
                      hk.initializers.TruncatedNormal,
                      hk.initializers.RandomNormal,
                      hk.initializers.RandomUniform,
                      hk.initializers.VarianceScaling,
                      hk.initializers.Constant)


class ParamSpec(NamedTuple):
  """One parameter as the module declared it."""
  module_name: str
  name: str
  shape: tuple
  dtype: Any
  init: Callable[[Sequence[int], Any], jax.Array]


def orthonormalise(normal: np.ndarray) -> np.ndarray:
  """`Q * sign(diag(R))` of the reduced QR of a tall `[m, n]` matrix.

  The sign correction makes Q uniformly (Haar) distributed, as in Haiku.
  """
  q_mat, r_mat = scipy.linalg.qr(normal, mode='economic', check_finite=False)
  return q_mat * np.sign(np.diag(r_mat))


def orthogonal(generator: np.random.Generator, shape: Sequence[int],
               scale: float, axis: int) -> np.ndarray:
  """`hk.initializers.Orthogonal(scale, axis)` on the host, float64.

  As in Haiku: `n_rows = shape[axis]` outputs by `n_cols = prod(shape) /
  n_rows` inputs (a `[kh, kw, C_in, C_out]` kernel is `C_out` rows of
  `kh * kw * C_in`, flattened in that order); the Gaussian matrix is drawn
  tall, orthonormalised, transposed back if it was wide, reshaped to
  `(n_rows,) + shape without axis` and `axis` moved into place.
  """
  if len(shape) < 2:
    raise ValueError('Orthogonal initializer requires at least a 2D shape, '
                     f'got {tuple(shape)}.')
  n_rows = shape[axis]
  n_cols = int(np.prod(shape)) // n_rows
  matrix_shape = (n_rows, n_cols) if n_rows > n_cols else (n_cols, n_rows)
  q_mat = orthonormalise(generator.standard_normal(matrix_shape))
  if n_rows < n_cols:
    q_mat = q_mat.T
  q_mat = np.reshape(q_mat, (n_rows,) + tuple(np.delete(shape, axis)))
  return scale * np.moveaxis(q_mat, 0, axis)


def _truncated_normal(generator, shape, lower, upper, stddev, mean):
  # Imported here: scipy.stats takes ~0.6 s to import, and loading a trained
  # model (predict, run_metrics) draws no parameters.
  import scipy.stats  # pylint: disable=g-import-not-at-top
  unit = scipy.stats.truncnorm.rvs(lower, upper, size=tuple(shape),
                                   random_state=generator)
  return stddev * unit + mean


def _fans(shape, fan_in_axes):
  """Haiku's fan-in and fan-out of a weight shape (`_compute_fans`)."""
  if len(shape) < 1:
    return 1, 1
  if len(shape) == 1:
    return shape[0], shape[0]
  if len(shape) == 2:
    return shape[0], shape[1]
  if fan_in_axes is not None:
    fan_in = np.prod([shape[i] for i in fan_in_axes])
    fan_out = np.prod([s for i, s in enumerate(shape) if i not in fan_in_axes])
    return fan_in, fan_out
  receptive_field = np.prod(shape[:-2])
  return shape[-2] * receptive_field, shape[-1] * receptive_field


def _variance_scaling(generator, shape, init):
  fan_in, fan_out = _fans(shape, getattr(init, 'fan_in_axes', None))
  fan = {'fan_in': fan_in, 'fan_out': fan_out}.get(
      init.mode, (fan_in + fan_out) / 2.0)
  scale = init.scale / max(1.0, fan)
  if init.distribution == 'truncated_normal':
    return _truncated_normal(generator, shape, -2.0, 2.0,
                             np.sqrt(scale) / _TRUNCATED_STD, 0.0)
  if init.distribution == 'normal':
    return np.sqrt(scale) * generator.standard_normal(shape)
  limit = np.sqrt(3.0 * scale)
  return generator.uniform(-limit, limit, shape)


def host_value(generator: np.random.Generator, spec: ParamSpec) -> np.ndarray:
  """Draws `spec` as its (host-supported) initialiser does."""
  init, shape = spec.init, spec.shape
  if isinstance(init, hk.initializers.Orthogonal):
    value = orthogonal(generator, shape, init.scale, init.axis)
  elif isinstance(init, hk.initializers.TruncatedNormal):
    value = _truncated_normal(generator, shape, init.lower, init.upper,
                              init.stddev, init.mean)
  elif isinstance(init, hk.initializers.RandomNormal):
    value = init.mean + init.stddev * generator.standard_normal(shape)
  elif isinstance(init, hk.initializers.RandomUniform):
    value = generator.uniform(init.minval, init.maxval, shape)
  elif isinstance(init, hk.initializers.VarianceScaling):
    value = _variance_scaling(generator, shape, init)
  elif isinstance(init, hk.initializers.Constant):
    value = np.broadcast_to(np.asarray(init.constant), shape)
  else:
    raise TypeError(f'{spec.module_name}/{spec.name}: no host version of '
                    f'initialiser {init!r}.')
  return np.asarray(value).astype(spec.dtype)


def param_specs(forward: Callable, *args) -> List[ParamSpec]:
  """The parameters `hk.transform(forward).init(rng, *args)` creates, in
  creation order; `forward` is only traced abstractly."""
  specs = []

  def record(next_creator, shape, dtype, init, context):
    specs.append(ParamSpec(context.module_name, context.name, tuple(shape),
                           np.dtype(dtype), init))
    return next_creator(shape, dtype, init)

  def recorded(*inner_args):
    with hk.custom_creator(record):
      return forward(*inner_args)

  jax.eval_shape(hk.transform(recorded).init, jax.random.PRNGKey(0), *args)
  return specs


def _key_words(rng: jax.Array) -> jax.Array:
  """The uint32 words of a raw (`PRNGKey`) or typed (`key`) PRNG key."""
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(rng)
  return rng


def _host_values(key_words: np.ndarray, specs: Sequence[ParamSpec]) -> list:
  """Every spec's value, parameter `i` from the `i`-th child seed of the key
  (so one parameter's draw does not depend on the others')."""
  seeds = np.random.SeedSequence(
      [int(w) for w in np.asarray(key_words).ravel()]).spawn(len(specs))
  return [host_value(np.random.default_rng(seed), spec)
          for seed, spec in zip(seeds, specs)]


def host_init(forward: Callable) -> Callable:
  """A drop-in for `hk.transform(forward).init` drawing on the host.

  Args:
    forward: the function Haiku transforms (builds the modules, runs them).

  Returns:
    `init(rng, *args) -> params`, the same tree as Haiku's init; `rng` a raw
    or typed PRNG key. Jittable and `eval_shape`-able.
  """
  def apply_fallback(spec, rng):
    return hk.transform(lambda: spec.init(spec.shape, spec.dtype)).apply(
        {}, rng)

  def init(rng, *args):
    specs = param_specs(forward, *args)
    on_host = [i for i, spec in enumerate(specs)
               if isinstance(spec.init, _HOST_INITIALISERS)]
    host_specs = [specs[i] for i in on_host]
    values = [None] * len(specs)
    if host_specs:
      drawn = jax.pure_callback(
          lambda words: _host_values(words, host_specs),
          [jax.ShapeDtypeStruct(s.shape, s.dtype) for s in host_specs],
          _key_words(rng), vmap_method='sequential')
      for i, value in zip(on_host, drawn):
        values[i] = value
    for i, spec in enumerate(specs):
      if values[i] is None:
        values[i] = apply_fallback(spec, jax.random.fold_in(rng, i))
    params = {}
    for spec, value in zip(specs, values):
      params.setdefault(spec.module_name, {})[spec.name] = value
    return params

  return init
