"""The model learns: a few Adam steps on a fixed tiny batch lower the loss."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hpunet_jax import objective
from hpunet_jax import models
from tests.test_model import TINY_HPUNET, TINY_SPUNET

LOSS = dict(objective='geco', beta=1.0, kappa=0.05, geco_decay=0.99,
            geco_rate=1e-2, top_k_fraction=0.02, deterministic_top_k=False,
            weight_decay=1e-5, geco_multiplier='adam', geco_multiplier_rate=0.0)


def _batch():
  rng = np.random.default_rng(0)
  image = rng.normal(size=(2, 16, 16, 1)).astype(np.float32)
  segmentation = (image[..., 0] > 0.3).astype(np.int32)  # Learnable target.
  return {'image': jnp.asarray(image), 'segmentation': jnp.asarray(segmentation),
          'mask': jnp.ones((2, 16, 16), jnp.float32)}


@pytest.mark.parametrize('model_type,kwargs,loss', [
    ('hpunet', dict(TINY_HPUNET, num_classes=2), LOSS),
    ('spunet', dict(TINY_SPUNET, num_classes=2),
     dict(LOSS, objective='elbo', top_k_fraction=None))])
def test_reconstruction_loss_goes_down(model_type, kwargs, loss):
  model = models.make_model(model_type, kwargs)
  batch = _batch()
  trainable = objective.init_trainable(model, jax.random.PRNGKey(0),
                                       batch['image'], batch['segmentation'],
                                       loss)
  geco_state = objective.init_geco_state()
  opt = optax.adam(3e-3)
  opt_state = opt.init(trainable)

  @jax.jit
  def step(trainable, opt_state, geco_state, rng):
    grads, (geco_state, scalars) = jax.grad(objective.loss_fn, has_aux=True)(
        trainable, geco_state, rng, batch, model=model, loss_config=loss)
    updates, opt_state = opt.update(grads, opt_state)
    return optax.apply_updates(trainable, updates), opt_state, geco_state, \
        scalars

  # Full-image cross-entropy of the posterior-mean reconstruction: a
  # deterministic measure, independent of the top-k draw.
  reconstruct = jax.jit(model.reconstruct)  # Op by op is slow.

  def full_xe(trainable):
    logits = reconstruct(trainable['model'], batch['image'],
                         batch['segmentation'])
    log_probs = jax.nn.log_softmax(logits)
    return -float(jnp.mean(jnp.take_along_axis(
        log_probs, batch['segmentation'][..., None], -1)))

  before = full_xe(trainable)
  for i in range(40):
    trainable, opt_state, geco_state, scalars = step(
        trainable, opt_state, geco_state, jax.random.PRNGKey(i))
    assert np.isfinite(float(scalars['loss']))
  after = full_xe(trainable)
  assert after < 0.7 * before, (before, after)
  assert set(scalars) >= {'loss', 'rec_sum', 'rec_mean', 'kl_sum', 'kl_0'}
