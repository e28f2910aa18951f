"""`config.compute_dtype` and `config.conv_precision` in the trainer's step."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from benchmarks import common
from experiments import lidc
from experiments import sharding
from experiments import train_step
from hpunet_jax import models
from hpunet_jax import precision

NUM_STEPS = 3


def _config():
  config = lidc.get_config('tiny')
  config.augment.rotation_degrees = 0.0  # Same batch in every step.
  # Loss over all pixels: bf16 draws other latent noise than f32, which a
  # top-k loss over 2 % of the pixels would not average out.
  config.loss.objective = 'elbo'
  config.loss.top_k_fraction = 0.0
  return config


def _step_and_state(config, compute_dtype, conv_precision='default'):
  model = precision.mixed_precision_model(
      models.make_model(config.model_type, config.model.to_dict()),
      compute_dtype)
  optimizer = optax.adam(1e-3)
  batch = {k: jnp.asarray(v) for k, v in common.synthetic_batch(config).items()}
  step = train_step.make_train_step(
      model=model, optimizer=optimizer, schedule=lambda step: 1e-3,
      loss_config=config.loss.to_dict(),
      augment_config=config.augment.to_dict(),
      mesh=sharding.make_mesh(config.mesh_shape), batch_example=batch,
      eigen_conv=False, conv_precision=conv_precision)
  state = train_step.init_train_state(
      jax.random.PRNGKey(0), {k: v[:1] for k, v in batch.items()},
      model=model, optimizer=optimizer, loss_config=config.loss.to_dict())
  return step, state, batch


def _train(config, compute_dtype):
  step, state, batch = _step_and_state(config, compute_dtype)
  history = []
  for _ in range(NUM_STEPS):
    state, scalars = step(state, batch)
    history.append({k: float(v) for k, v in scalars.items()})
  return state, history


def test_float32_default_is_the_plain_model():
  model = models.make_model('hpunet', _config().model.to_dict())
  assert precision.mixed_precision_model(model, 'float32') is model


def test_float32_step_is_bitwise_the_unwrapped_step():
  config = _config()
  model = models.make_model(config.model_type, config.model.to_dict())
  batch = {k: jnp.asarray(v) for k, v in common.synthetic_batch(config).items()}
  optimizer = optax.adam(1e-3)
  state = train_step.init_train_state(
      jax.random.PRNGKey(0), {k: v[:1] for k, v in batch.items()},
      model=model, optimizer=optimizer, loss_config=config.loss.to_dict())
  kwargs = dict(optimizer=optimizer, schedule=lambda step: 1e-3,
                loss_config=config.loss.to_dict(),
                augment_config=config.augment.to_dict(),
                mesh=sharding.make_mesh(config.mesh_shape),
                batch_example=batch, eigen_conv=False)
  plain = train_step.make_train_step(model=model, **kwargs)
  wrapped = train_step.make_train_step(
      model=precision.mixed_precision_model(model, 'float32'),
      conv_precision='default', **kwargs)
  copy = lambda: jax.tree.map(jnp.copy, state)
  out_plain, out_wrapped = plain(copy(), batch), wrapped(copy(), batch)
  for a, b in zip(jax.tree.leaves(out_plain), jax.tree.leaves(out_wrapped)):
    np.testing.assert_array_equal(a, b)


def test_bfloat16_trains_with_float32_state_and_close_losses():
  config = _config()
  _, history32 = _train(config, 'float32')
  state16, history16 = _train(config, 'bfloat16')
  losses16 = [h['loss'] for h in history16]
  assert np.all(np.isfinite(losses16)) and losses16[-1] != losses16[0]
  for leaf in jax.tree.leaves((state16.trainable, state16.opt_state)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32
  # Same parameters and batch in the first step. The coarsest KL does not
  # depend on the latent noise (bf16 draws other noise), the finer ones do.
  first32, first16 = history32[0], history16[0]
  np.testing.assert_allclose(first16['kl_0'], first32['kl_0'], rtol=0.02)
  np.testing.assert_allclose(first16['rec_sum'], first32['rec_sum'],
                             rtol=0.1)


def _float32_and_bfloat16_models():
  """The tiny LIDC model, its bfloat16 wrapper, parameters and a batch."""
  config = _config()
  model = models.make_model(config.model_type, config.model.to_dict())
  batch = common.synthetic_batch(config)
  params = model.init(jax.random.PRNGKey(0), batch['image'],
                      batch['segmentation'])
  model16 = precision.mixed_precision_model(model, 'bfloat16')
  return model, model16, params, batch


def test_bfloat16_reconstruction_is_close_to_float32():
  model, model16, params, batch = _float32_and_bfloat16_models()
  logits32 = jax.jit(model.reconstruct)(params, batch['image'],
                                        batch['segmentation'])
  logits16 = jax.jit(model16.reconstruct)(params, batch['image'],
                                          batch['segmentation'])
  assert logits16.dtype == jnp.float32
  scale = float(jnp.std(logits32))
  np.testing.assert_allclose(logits16, logits32, atol=0.05 * scale)


def test_bfloat16_sample_applies_per_sample_to_float32_logits():
  _, model16, params, batch = _float32_and_bfloat16_models()
  rng, image = jax.random.PRNGKey(1), batch['image'][:1]
  logits = model16.sample(params, rng, image, 3)
  seen = []

  def labels(out):  # What the evaluator's reduction sees.
    seen.append(out.dtype)
    return jnp.argmax(out, axis=-1)

  np.testing.assert_array_equal(
      model16.sample(params, rng, image, 3, per_sample=labels),
      jnp.argmax(logits, axis=-1))
  assert seen == [jnp.float32]


def _convs_and_dots(lowered_text):
  return [line for line in lowered_text.splitlines()
          if 'stablehlo.convolution' in line or 'stablehlo.dot_general' in line]


def test_bfloat16_convolutions_and_highest_precision_everywhere():
  config = _config()
  step, state, batch = _step_and_state(config, 'bfloat16')
  ops = _convs_and_dots(step.lower(state, batch).as_text())
  assert any('bf16' in op for op in ops)
  step, state, batch = _step_and_state(config, 'float32', 'highest')
  ops = _convs_and_dots(step.lower(state, batch).as_text())
  # Forward and backward (including convolutions.pointwise_conv's custom VJP).
  assert ops and all('HIGHEST' in op for op in ops), [
      op for op in ops if 'HIGHEST' not in op][:3]


def test_bad_values_name_the_field():
  with pytest.raises(ValueError, match='config.compute_dtype'):
    precision.check('float16', 'default')
  with pytest.raises(ValueError, match='config.conv_precision'):
    precision.check('float32', 'fast')
