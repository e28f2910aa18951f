"""KL, top-k, ELBO and GECO against hand-computed and Monte-Carlo values."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from hpunet_jax import distributions
from hpunet_jax import losses


def _gaussian(rng, shape, scale=1.0):
  k1, k2 = jax.random.split(rng)
  return distributions.DiagonalGaussian(
      scale * jax.random.normal(k1, shape),
      0.5 * scale * jax.random.normal(k2, shape))


def _log_prob(dist, z):
  std = jnp.exp(dist.log_std)
  return jnp.sum(-0.5 * ((z - dist.mean) / std) ** 2 - dist.log_std
                 - 0.5 * jnp.log(2 * jnp.pi), axis=-1)


def test_kl_matches_monte_carlo():
  q = _gaussian(jax.random.PRNGKey(0), (1, 2, 2, 3))
  p = _gaussian(jax.random.PRNGKey(1), (1, 2, 2, 3))
  analytic = losses.kl_divergence(q, p)
  num = 200_000
  noise = jax.random.normal(jax.random.PRNGKey(2), (num,) + q.mean.shape)
  z = q.mean + jnp.exp(q.log_std) * noise
  monte_carlo = jnp.mean(_log_prob(q, z) - _log_prob(p, z), axis=0)
  np.testing.assert_allclose(analytic, monte_carlo, rtol=0.03, atol=0.02)


def test_kl_zero_for_equal_and_positive_otherwise():
  q = _gaussian(jax.random.PRNGKey(0), (2, 4, 4, 2))
  np.testing.assert_allclose(losses.kl_divergence(q, q), 0.0, atol=1e-6)
  p = _gaussian(jax.random.PRNGKey(1), (2, 4, 4, 2))
  assert float(jnp.min(losses.kl_divergence(q, p))) > 0.0


def test_kl_per_level_sums_positions_and_averages_batch():
  q = distributions.DiagonalGaussian(jnp.ones((2, 2, 2, 1)),
                                     jnp.zeros((2, 2, 2, 1)))
  p = distributions.DiagonalGaussian(jnp.zeros((2, 2, 2, 1)),
                                     jnp.zeros((2, 2, 2, 1)))
  # KL(N(1,1) || N(0,1)) = 0.5 per position; 4 positions per image.
  np.testing.assert_allclose(losses.kl_per_level(q, p), 2.0, rtol=1e-6)


def _pixel_loss(seed, shape=(2, 8, 8)):
  return jax.random.uniform(jax.random.PRNGKey(seed), shape) + 0.01


def test_top_k_selects_exactly_k_and_never_masked_pixels():
  loss = _pixel_loss(0)
  valid = jnp.ones_like(loss).at[0, :4].set(0.0)  # 32 masked pixels.
  masked_loss = loss.at[0, :4].set(100.0)  # Huge losses, still masked.
  for seed in range(5):
    sel = losses.top_k_mask(masked_loss, valid, 10, jax.random.PRNGKey(seed))
    assert float(sel.sum()) == 10
    assert float((sel * (1 - valid)).sum()) == 0


def test_deterministic_top_k_picks_the_largest():
  loss = _pixel_loss(1)
  sel = losses.top_k_mask(loss, jnp.ones_like(loss), 7,
                          jax.random.PRNGKey(0), deterministic=True)
  threshold = np.sort(np.ravel(loss))[-7]
  np.testing.assert_array_equal(np.asarray(sel) > 0,
                                np.asarray(loss) >= threshold)


def test_stochastic_top_k_frequency_follows_the_loss():
  loss = jnp.array([[1.0, 2.0, 3.0, 4.0, 0.0]])  # [B=1, 5] pixels.
  valid = jnp.ones_like(loss)
  draws = 4000
  keys = jax.random.split(jax.random.PRNGKey(0), draws)
  sel = jax.vmap(lambda k: losses.top_k_mask(loss, valid, 1, k))(keys)
  counts = np.asarray(sel.sum(axis=0))[0]
  assert counts[4] == 0  # Zero loss: never drawn.
  expected = np.array([1, 2, 3, 4]) / 10 * draws
  _, p_value = stats.chisquare(counts[:4], expected)
  assert p_value > 1e-3, (counts, expected)


def test_reconstruction_loss_terms():
  logits = jnp.zeros((2, 4, 4, 2))  # xe = log 2 everywhere.
  labels = jnp.zeros((2, 4, 4), jnp.int32)
  valid = jnp.ones((2, 4, 4)).at[1].set(0.0).at[1, 0, 0].set(1.0)
  rec = losses.reconstruction_loss(logits, labels, valid,
                                   jax.random.PRNGKey(0), top_k_fraction=None)
  log2 = np.log(2)
  np.testing.assert_allclose(rec.rec_sum, (16 + 1) * log2 / 2, rtol=1e-6)
  np.testing.assert_allclose(rec.rec_mean, log2, rtol=1e-6)
  np.testing.assert_allclose(rec.num_pixels, 17 / 2, rtol=1e-6)
  top = losses.reconstruction_loss(logits, labels, valid,
                                   jax.random.PRNGKey(0), top_k_fraction=0.25)
  assert float(top.mask.sum()) == 8  # floor(32 * 0.25).
  np.testing.assert_allclose(top.rec_sum, 8 * log2 / 2, rtol=1e-6)


def test_elbo():
  np.testing.assert_allclose(losses.elbo_loss(3.0, 2.0, 0.5), 4.0)


def _geco(rec_sum, v, state, kappa=0.1, num_pixels=10.0):
  rec = losses.ReconstructionLoss(jnp.asarray(rec_sum), jnp.asarray(0.0),
                                  jnp.asarray(num_pixels), None)
  return losses.geco_loss(rec, jnp.asarray(0.5), v, state, kappa=kappa)


def test_geco_moving_average_and_straight_through_gradient():
  state = losses.init_geco_state()
  v = losses.initial_lagrange_parameter()
  loss, state, lagrange, constraint = _geco(3.0, v, state)
  np.testing.assert_allclose(lagrange, 1.0, rtol=1e-6)  # lambda_0 = 1.
  np.testing.assert_allclose(constraint, 3.0 - 1.0, rtol=1e-6)  # ma_1 = rec.
  _, state, _, constraint = _geco(5.0, v, state)
  np.testing.assert_allclose(state.moving_average, 0.99 * 3 + 0.01 * 5,
                             rtol=1e-6)
  grad = jax.grad(lambda r: _geco(r, v, state)[0])(5.0)
  np.testing.assert_allclose(grad, 1.0, rtol=1e-6)  # d(lambda * ma)/d rec.


def test_geco_gradient_ascends_on_v():
  state = losses.init_geco_state()
  v = losses.initial_lagrange_parameter()
  violated = jax.grad(lambda v: _geco(3.0, v, state)[0])(v)  # C > 0.
  satisfied = jax.grad(lambda v: _geco(0.5, v, state)[0])(v)  # C < 0.
  assert violated < 0 < satisfied  # Descent on the loss raises v iff C > 0.


def test_geco_lambda_rises_while_violated_then_falls():
  """Toy problem: rec_sum = (x - 2)^2 * 10 pixels, kappa = 0.1 per pixel."""
  import optax
  params = {'x': jnp.asarray(0.0), 'v': losses.initial_lagrange_parameter()}
  state = losses.init_geco_state()
  opt = optax.adam(0.05)
  opt_state = opt.init(params)

  def loss_fn(params, state):
    rec_sum = 10.0 * jnp.square(params['x'] - 2.0)
    loss, state, lagrange, constraint = _geco(rec_sum, params['v'], state)
    return loss, (state, lagrange, constraint)

  @jax.jit
  def step(params, opt_state, state):
    grads, aux = jax.grad(loss_fn, has_aux=True)(params, state)
    updates, opt_state = opt.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, aux

  lambdas, constraints = [], []
  for _ in range(400):
    params, opt_state, (state, lagrange, constraint) = step(params, opt_state,
                                                            state)
    lambdas.append(float(lagrange))
    constraints.append(float(constraint))
  first_ok = next(i for i, c in enumerate(constraints) if c < 0)
  assert first_ok > 5
  assert lambdas[first_ok - 1] > lambdas[0]  # Rose while violated.
  assert lambdas[-1] < max(lambdas)  # Fell once the constraint held.
  assert min(lambdas) >= 0.0


def test_weight_decay_counts_kernels_only():
  params = {'conv': {'w': jnp.ones((3, 3, 1, 2)), 'b': jnp.ones((2,))}}
  np.testing.assert_allclose(losses.weight_decay_loss(params, 0.1),
                             0.5 * 0.1 * 18)


def test_multiplicative_multiplier_rises_while_violated_then_falls():
  """The 'multiplicative' GECO rule on the toy problem of the test above:
  lambda rises while the constraint is violated, falls once it holds, and
  stays > 0; each step is `rate * C` per pixel in log lambda."""
  import optax
  params = {'x': jnp.asarray(0.0)}
  state = losses.init_geco_state()
  log_lambda = jnp.asarray(0.0)
  opt = optax.adam(0.05)
  opt_state = opt.init(params)
  num_pixels, kappa, rate = 10.0, 0.1, 0.05

  def loss_fn(params, state, log_lambda):
    rec = losses.ReconstructionLoss(
        10.0 * jnp.square(params['x'] - 2.0), jnp.asarray(0.0),
        jnp.asarray(num_pixels), None)
    loss, state, constraint = losses.geco_constrained_loss(
        rec, jnp.asarray(0.5) * jnp.square(params['x']),
        jnp.exp(log_lambda), state, kappa=kappa, decay=0.9)
    return loss, (state, constraint)

  @jax.jit
  def step(params, opt_state, state, log_lambda):
    grads, (state, constraint) = jax.grad(loss_fn, has_aux=True)(
        params, state, log_lambda)
    updates, opt_state = opt.update(grads, opt_state)
    new_log_lambda = losses.multiplicative_lagrange_update(
        log_lambda, constraint / num_pixels, rate)
    return (optax.apply_updates(params, updates), opt_state, state,
            new_log_lambda, constraint)

  lambdas, constraints = [], []
  for _ in range(400):
    previous = log_lambda
    params, opt_state, state, log_lambda, constraint = step(
        params, opt_state, state, log_lambda)
    np.testing.assert_allclose(log_lambda - previous,
                               rate * constraint / num_pixels, atol=1e-5)
    lambdas.append(float(jnp.exp(log_lambda)))
    constraints.append(float(constraint))
  first_ok = next(i for i, c in enumerate(constraints) if c < 0)
  assert first_ok > 5
  assert lambdas[first_ok - 1] > 2 * lambdas[0]  # Rose while violated.
  assert lambdas[-1] < 0.5 * max(lambdas)  # Fell once the constraint held.
  assert all(c < 0 for c in constraints[-50:])  # And it keeps holding.
  assert min(lambdas) > 0.0
  # Clipped far outside any useful range, never overflowing.
  assert float(losses.multiplicative_lagrange_update(
      jnp.asarray(29.0), jnp.asarray(1e6), 1.0)) == losses.LOG_LAMBDA_BOUND


def test_objective_multiplicative_rule_gives_lambda_no_gradient():
  from hpunet_jax import models
  from hpunet_jax import objective
  from tests.test_model import TINY_HPUNET
  loss_config = dict(objective='geco', beta=1.0, kappa=0.05, geco_decay=0.99,
                     geco_rate=1e-2, top_k_fraction=0.02,
                     deterministic_top_k=False, weight_decay=1e-5,
                     geco_multiplier='multiplicative',
                     geco_multiplier_rate=0.1)
  model = models.make_model('hpunet', dict(TINY_HPUNET, num_classes=2))
  rng = np.random.default_rng(0)
  batch = {'image': jnp.asarray(rng.normal(size=(2, 16, 16, 1)), jnp.float32),
           'segmentation': jnp.asarray(rng.integers(0, 2, (2, 16, 16))),
           'mask': jnp.ones((2, 16, 16))}
  trainable = objective.init_trainable(model, jax.random.PRNGKey(0),
                                       batch['image'], batch['segmentation'],
                                       loss_config)
  assert set(trainable['geco']) == {'log_lambda'}
  # Jitted: the op-by-op gradient of even a tiny HPU-Net takes ~50 s.
  grad_fn = jax.jit(jax.grad(functools.partial(
      objective.loss_fn, model=model, loss_config=loss_config), has_aux=True))
  grads, (_, scalars) = grad_fn(trainable, losses.init_geco_state(),
                                jax.random.PRNGKey(1), batch)
  assert float(grads['geco']['log_lambda']) == 0.0
  assert float(scalars['lambda']) == 1.0
  updated = objective.update_multiplier(trainable, scalars, loss_config)
  np.testing.assert_allclose(updated['geco']['log_lambda'],
                             0.1 * scalars['constraint_per_pixel'], rtol=1e-6)
  adam = dict(loss_config, geco_multiplier='adam')
  assert objective.update_multiplier(trainable, scalars, adam) is trainable
  with pytest.raises(ValueError, match='geco_multiplier_rate'):
    objective.init_trainable(model, jax.random.PRNGKey(0), batch['image'],
                             batch['segmentation'],
                             dict(loss_config, geco_multiplier_rate=0.0))
  with pytest.raises(ValueError, match='geco_multiplier'):
    objective.init_trainable(model, jax.random.PRNGKey(0), batch['image'],
                             batch['segmentation'],
                             dict(loss_config, geco_multiplier='sgd'))


def test_multiplicative_rule_with_a_separate_rate_down():
  from hpunet_jax import objective
  log_lambda = jnp.asarray(1.0)
  # Violated (C > 0): `rate`; held (C < 0): `rate_down`; None: `rate` both.
  for c, expected in ((0.5, 1.0 + 0.02 * 0.5), (-0.5, 1.0 - 0.1 * 0.5),
                      (0.0, 1.0)):
    np.testing.assert_allclose(losses.multiplicative_lagrange_update(
        log_lambda, jnp.asarray(c), 0.02, rate_down=0.1), expected, rtol=1e-6)
  np.testing.assert_allclose(losses.multiplicative_lagrange_update(
      log_lambda, jnp.asarray(-0.5), 0.02, rate_down=None), 1.0 - 0.01,
                             rtol=1e-6)
  # The objective passes the config's rate_down on; absent = symmetric.
  loss_config = dict(objective='geco', geco_multiplier='multiplicative',
                     geco_multiplier_rate=0.02, geco_multiplier_rate_down=0.1)
  trainable = {'geco': {'log_lambda': log_lambda}}
  held = {'constraint_per_pixel': jnp.asarray(-0.2)}
  np.testing.assert_allclose(objective.update_multiplier(
      trainable, held, loss_config)['geco']['log_lambda'], 1.0 - 0.02,
                             rtol=1e-6)
  symmetric = {k: v for k, v in loss_config.items()
               if k != 'geco_multiplier_rate_down'}
  np.testing.assert_allclose(objective.update_multiplier(
      trainable, held, symmetric)['geco']['log_lambda'], 1.0 - 0.004,
                             rtol=1e-6)
  for bad in (0.0, -0.1, float('nan'), float('inf'), True, '0.1'):
    with pytest.raises(ValueError, match='loss.geco_multiplier_rate_down'):
      objective.update_multiplier(
          trainable, held, dict(loss_config, geco_multiplier_rate_down=bad))
  with pytest.raises(ValueError, match='loss.geco_multiplier_rate '):
    objective.update_multiplier(
        trainable, held, dict(loss_config, geco_multiplier_rate=float('nan')))
