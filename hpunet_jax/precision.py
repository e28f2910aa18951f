"""Mixed precision and convolution precision, without touching the modules.

`config.compute_dtype = 'bfloat16'` runs the networks (convolutions,
activations, latent samples) in bfloat16 while the parameters, the optimiser
state, the KL and the loss stay float32: `mixed_precision_model` casts the
float32 parameters and the image to bfloat16 on the way in (their gradients
come back float32 through the cast) and the logits and latent Gaussians to
float32 on the way out, and recomputes the KL from the float32 Gaussians.
'float32' returns the model unchanged.

`config.conv_precision` picks the precision of every convolution and matmul
whose `precision` argument is unset: 'default' is XLA's (on TPU an float32
convolution then runs in bfloat16 passes), 'high' or 'highest' ask for
(near) full float32. It is a JAX config context (`conv_precision_context`),
read while tracing, so it must surround the gradient too (custom VJPs, e.g.
`blocks.pointwise_conv`, trace their backward pass then).
"""
import contextlib
from typing import Any

import jax
import jax.numpy as jnp

from hpunet_jax import choices
from hpunet_jax import losses
from hpunet_jax import models

COMPUTE_DTYPES = ('float32', 'bfloat16')
CONV_PRECISIONS = ('default', 'high', 'highest')


def check(compute_dtype: str, conv_precision: str) -> None:
  """Raises ValueError naming the config field of a bad value."""
  choices.check_choice('config.compute_dtype', compute_dtype, COMPUTE_DTYPES)
  choices.check_choice('config.conv_precision', conv_precision,
                       CONV_PRECISIONS)


def conv_precision_context(
    conv_precision: str) -> contextlib.AbstractContextManager:
  """`jax.default_matmul_precision` for 'high'/'highest'; no-op for 'default'."""
  check('float32', conv_precision)
  if conv_precision == 'default':
    return contextlib.nullcontext()
  return jax.default_matmul_precision(conv_precision)


def _cast_floats(tree: Any, dtype) -> Any:
  """Casts the floating-point leaves of `tree` to `dtype`."""
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
      else x, tree)


def mixed_precision_model(model: models.Model,
                          compute_dtype: str) -> models.Model:
  """`model` computing in `compute_dtype`, with float32 outputs.

  Args:
    model: from `models.make_model` (float32 parameters).
    compute_dtype: 'float32' (returns `model` itself) or 'bfloat16'.

  Returns:
    A `models.Model` taking and initialising float32 parameters whose
    `train_forward`, `reconstruct`, `encode`/`decode` and `sample` run in
    `compute_dtype` and return float32 logits, Gaussians and KL.
  """
  check(compute_dtype, 'default')
  if compute_dtype == 'float32':
    return model
  dtype = jnp.dtype(compute_dtype)
  to_f32 = lambda tree: _cast_floats(tree, jnp.float32)
  down = lambda tree: _cast_floats(tree, dtype)

  def train_forward(params, rng, image, segmentation):
    out = to_f32(model.train_forward(down(params), rng, down(image),
                                     segmentation))
    kl = jnp.stack([losses.kl_per_level(q, p)
                    for q, p in zip(out.posterior, out.prior)])
    return out._replace(kl_per_level=kl)

  def reconstruct(params, image, segmentation):
    return to_f32(model.reconstruct(down(params), down(image), segmentation))

  def encode(params, image):
    return model.encode(down(params), down(image))

  def decode(params, rng, encoding, mean_levels=None):
    return to_f32(model.decode(down(params), rng, down(encoding),
                               mean_levels))

  def sample(params, rng, image, num_samples, mean_levels=None,
             per_sample=None):
    reduce = per_sample or (lambda logits: logits)
    return to_f32(model.sample(down(params), rng, down(image), num_samples,
                               mean_levels,
                               per_sample=lambda out: reduce(to_f32(out))))

  def sample_full_rerun(params, rng, image, num_samples, mean_levels=None):
    return to_f32(model.sample_full_rerun(down(params), rng, down(image),
                                          num_samples, mean_levels))

  return model._replace(train_forward=train_forward, reconstruct=reconstruct,
                        encode=encode, decode=decode, sample=sample,
                        sample_full_rerun=sample_full_rerun)
