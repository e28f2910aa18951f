"""Diagonal Gaussians over latent grids (paper Eq. 1 and 3)."""
from typing import NamedTuple

import jax
import jax.numpy as jnp


class DiagonalGaussian(NamedTuple):
  """A diagonal Gaussian per latent position.

  Attributes:
    mean: `[B, h, w, D]` (the sPU-Net's global latent has `h = w = 1`).
    log_std: `[B, h, w, D]`, the log standard deviation (the networks predict
      log sigma directly, as in the authors' code).
  """
  mean: jax.Array
  log_std: jax.Array


def gaussian_from_params(mean_and_log_std: jax.Array) -> DiagonalGaussian:
  """Splits `[..., 2D]` conv outputs into `(mean, log_std)`, each `[..., D]`."""
  dim = mean_and_log_std.shape[-1] // 2
  return DiagonalGaussian(mean_and_log_std[..., :dim],
                          mean_and_log_std[..., dim:])


def sample_or_mean(dist: DiagonalGaussian, rng: jax.Array,
                   use_mean: jax.Array) -> jax.Array:
  """Reparameterised sample, or the mean where `use_mean` is True.

  The noise is drawn either way so that a key always produces the same
  stream of draws, whichever levels use their mean (keeps sampling
  deterministic per key, and `use_mean` may be a traced boolean).

  Args:
    dist: the distribution, leaves `[B, h, w, D]`.
    rng: a PRNG key.
    use_mean: scalar bool (Python or traced).

  Returns:
    z: `[B, h, w, D]`.
  """
  noise = jax.random.normal(rng, dist.mean.shape, dist.mean.dtype)
  sample = dist.mean + jnp.exp(dist.log_std) * noise
  return jnp.where(use_mean, dist.mean, sample)
