"""The learning objective, one function per equation (paper Sec. 2, Appx. A, D).

- `kl_divergence`, `kl_per_level`: analytic KL of diagonal Gaussians (Eq. 12).
- `top_k_mask`, `reconstruction_loss`: stochastic top-k cross-entropy.
- `elbo_loss`: Eq. 5.
- `geco_moving_average`, `lagrange_multiplier`, `geco_loss`: Eq. 6 as coded.
- `geco_constrained_loss`, `multiplicative_lagrange_update`: the same loss
  with a multiplier of its own update rule (Rezende & Viola 2018), a
  documented deviation for short runs (docs/paper_notes.md, section 27).
- `weight_decay_loss`: the 1e-5 L2 term of Appx. D.

Shape glossary: `B` batch, `H, W` image size, `K` classes, `D` latent dims.
"""
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from hpunet_jax import distributions


def kl_divergence(q: distributions.DiagonalGaussian,
                  p: distributions.DiagonalGaussian) -> jax.Array:
  """KL(q || p) per position, summed over latent dims: `[B, h, w]`.

  KL = log(s_p / s_q) + (s_q^2 + (m_q - m_p)^2) / (2 s_p^2) - 1/2 per dim.
  """
  var_ratio = jnp.exp(2.0 * (q.log_std - p.log_std))
  mean_term = jnp.square((q.mean - p.mean) * jnp.exp(-p.log_std))
  kl = 0.5 * (var_ratio + mean_term - 1.0) - (q.log_std - p.log_std)
  return jnp.sum(kl, axis=-1)


def kl_per_level(q: distributions.DiagonalGaussian,
                 p: distributions.DiagonalGaussian) -> jax.Array:
  """One term of Eq. 12: KL summed over positions, averaged over the batch."""
  kl = kl_divergence(q, p)
  return jnp.mean(jnp.sum(kl.reshape(kl.shape[0], -1), axis=1))


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Pixel-wise cross-entropy: logits `[B, H, W, K]`, labels `[B, H, W]` ->
  `[B, H, W]`."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


def top_k_mask(pixel_loss: jax.Array, valid_mask: jax.Array, k: int,
               rng: jax.Array, deterministic: bool = False) -> jax.Array:
  """Selects k pixels of the whole batch, with probability following the loss.

  Scores are `log(xe / sum(xe)) + G + log(mask)` with Gumbel noise `G`, so the
  top k scores are k draws without replacement from the categorical
  distribution over pixels with probabilities proportional to the loss (the
  Gumbel top-k trick). `deterministic=True` drops `G` and picks the k largest
  losses. Invalid pixels (`valid_mask == 0`) are never selected.

  Args:
    pixel_loss: `[B, H, W]`, the (stop-gradient) per-pixel loss.
    valid_mask: `[B, H, W]`, 1 = valid.
    k: number of pixels to select (static).
    rng: PRNG key for the Gumbel noise.
    deterministic: pick the k largest losses.

  Returns:
    `[B, H, W]` float 0/1 mask with at most k ones (fewer only when fewer
    than k pixels are valid).
  """
  loss = jax.lax.stop_gradient(pixel_loss).reshape(-1)
  valid = valid_mask.reshape(-1) > 0
  normalised = loss / jnp.maximum(jnp.sum(jnp.where(valid, loss, 0.0)), 1e-30)
  score = jnp.log(normalised)  # -inf for zero-loss pixels, as coded.
  if not deterministic:
    uniform = jax.random.uniform(rng, score.shape, dtype=score.dtype)
    score = score - jnp.log(-jnp.log(uniform + 1e-20) + 1e-20)
  score = jnp.where(valid, score, -jnp.inf)
  _, indices = jax.lax.top_k(score, k)
  selected = jnp.zeros(score.shape, jnp.float32).at[indices].set(1.0)
  return (selected * valid).reshape(pixel_loss.shape)


class ReconstructionLoss(NamedTuple):
  """Reconstruction terms (docs/paper_notes.md#10-top-k-reconstruction-loss).

  Attributes:
    rec_sum: mean over the batch of the per-image sum of `mask * xe`.
    rec_mean: `sum(mask * xe) / sum(mask)`, the per-pixel value to compare
      with kappa.
    num_pixels: mean over the batch of the per-image number of pixels in the
      loss (the `N` of the GECO constraint).
    mask: `[B, H, W]`, the pixels that entered the loss.
  """
  rec_sum: jax.Array
  rec_mean: jax.Array
  num_pixels: jax.Array
  mask: jax.Array


def reconstruction_loss(logits: jax.Array, labels: jax.Array,
                        valid_mask: jax.Array, rng: jax.Array,
                        top_k_fraction=0.02,
                        deterministic_top_k: bool = False
                        ) -> ReconstructionLoss:
  """Stochastic top-k cross-entropy over the batch's pixels.

  Args:
    logits: `[B, H, W, K]`.
    labels: `[B, H, W]` int.
    valid_mask: `[B, H, W]`, 1 = valid (0 = padding / ignore label).
    rng: key for the Gumbel noise.
    top_k_fraction: fraction of *all* the batch's pixels kept,
      `k = floor(B * H * W * top_k_fraction)`; None or 0 = every valid pixel.
    deterministic_top_k: select the k largest losses instead of sampling.
  """
  xe = softmax_cross_entropy(logits, labels)
  mask = valid_mask.astype(jnp.float32)
  if top_k_fraction:
    if not 0.0 < top_k_fraction <= 1.0:
      raise ValueError(f'top_k_fraction must be in (0, 1], got '
                       f'{top_k_fraction}.')
    k = max(1, int(xe.size * top_k_fraction))
    mask = top_k_mask(xe, mask, k, rng, deterministic_top_k)
  batch = xe.shape[0]
  per_image = jnp.sum((mask * xe).reshape(batch, -1), axis=1)
  num_pixels = jnp.mean(jnp.sum(mask.reshape(batch, -1), axis=1))
  rec_mean = jnp.sum(mask * xe) / jnp.maximum(jnp.sum(mask), 1.0)
  return ReconstructionLoss(jnp.mean(per_image), rec_mean, num_pixels, mask)


def elbo_loss(rec_sum: jax.Array, kl_sum: jax.Array, beta: float) -> jax.Array:
  """Eq. 5: `rec + beta * sum_l KL_l` (per image, averaged over the batch)."""
  return rec_sum + beta * kl_sum


class GecoState(NamedTuple):
  """GECO's non-trainable state (the multiplier's parameter `v` is trained).

  Attributes:
    moving_average: exponential moving average of `rec_sum`.
    initialized: 0 before the first step, 1 after (the first step takes
      `rec_sum` itself, with no debiasing, as in the authors' code).
  """
  moving_average: jax.Array
  initialized: jax.Array


def init_geco_state() -> GecoState:
  return GecoState(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))


def initial_lagrange_parameter() -> jax.Array:
  """`v_0` with `softplus(v_0)^2 = 1`, so lambda starts at 1."""
  return jnp.asarray(jnp.log(jnp.expm1(1.0)), jnp.float32)


def scale_gradient(x: jax.Array, scale: float) -> jax.Array:
  """Identity forward; gradient multiplied by `scale`."""
  return scale * x + jax.lax.stop_gradient((1.0 - scale) * x)


def geco_moving_average(rec_sum: jax.Array, state: GecoState,
                        decay: float):
  """`ma_t = decay * ma_{t-1} + (1 - decay) * rec_sum_t` (`ma_1 = rec_sum_1`).

  The forward value is the moving average; the gradient flows straight
  through to `rec_sum_t`.

  Returns:
    (moving average with straight-through gradient, new `GecoState`).
  """
  rec = jax.lax.stop_gradient(rec_sum)
  average = jnp.where(state.initialized > 0,
                      decay * state.moving_average + (1.0 - decay) * rec, rec)
  straight_through = rec_sum + jax.lax.stop_gradient(average - rec_sum)
  return straight_through, GecoState(average, jnp.ones_like(state.initialized))


def lagrange_multiplier(v: jax.Array, rate: float) -> jax.Array:
  """`lambda = softplus(v)^2 >= 0`; v's gradient is scaled by `-rate`, so the
  optimiser that *descends* the loss *ascends* on v (the multiplier grows
  while the constraint is violated)."""
  return jnp.square(jax.nn.softplus(scale_gradient(v, -rate)))


# |log lambda| never exceeds this under the multiplicative rule: keeps
# exp(log lambda) finite in float32; far outside any useful multiplier.
LOG_LAMBDA_BOUND = 30.0


def multiplicative_lagrange_update(log_lambda: jax.Array,
                                   constraint_per_pixel: jax.Array,
                                   rate: float,
                                   rate_down: Optional[float] = None
                                   ) -> jax.Array:
  """`lambda <- lambda * exp(rate * C)` (Rezende & Viola 2018), in log form.

  `C` is the moving-average constraint per loss pixel (`ma / N - kappa`), so
  the step does not depend on the image size or the top-k fraction: lambda
  grows while the constraint is violated, shrinks once it holds, in
  proportion to how far it is from kappa, and stays > 0. With `rate_down`,
  lambda falls (C < 0) at that rate instead: a slack met early is traded
  for a smaller KL sooner, while the rise stays as slow as `rate`.

  Args:
    log_lambda: scalar, log of the current multiplier.
    constraint_per_pixel: scalar, `C`.
    rate: step size per nat of constraint per pixel (> 0).
    rate_down: step size while `C < 0` (> 0); None = `rate`.

  Returns:
    The next `log_lambda`, clipped to +- `LOG_LAMBDA_BOUND`.
  """
  constraint = jax.lax.stop_gradient(constraint_per_pixel)
  if rate_down is None:
    step = rate * constraint
  else:
    step = jnp.where(constraint < 0, rate_down, rate) * constraint
  return jnp.clip(log_lambda + step, -LOG_LAMBDA_BOUND, LOG_LAMBDA_BOUND)


def geco_constrained_loss(rec: ReconstructionLoss, kl_sum: jax.Array,
                          lagrange: jax.Array, state: GecoState,
                          kappa: float, decay: float):
  """`lambda * (ma(rec_sum) - kappa * N) + sum_l KL_l` for a given lambda.

  Returns:
    (loss, new_state, constraint).
  """
  average, new_state = geco_moving_average(rec.rec_sum, state, decay)
  constraint = average - kappa * rec.num_pixels
  return lagrange * constraint + kl_sum, new_state, constraint


def geco_loss(rec: ReconstructionLoss, kl_sum: jax.Array, v: jax.Array,
              state: GecoState, kappa: float, decay: float = 0.99,
              rate: float = 1e-2):
  """Eq. 6 as coded: `lambda * (ma(rec_sum) - kappa * N) + sum_l KL_l`.

  Args:
    rec: the reconstruction terms; `kappa` is per pixel, scaled by the
      number of pixels `N` in the loss per image.
    kl_sum: sum of the per-level KLs.
    v: the Lagrange parameter (trained, part of the params).
    state: moving-average state.
    kappa: the reconstruction target per pixel.
    decay: moving-average decay.
    rate: gradient scale of v (its sign makes the optimiser ascend).

  Returns:
    (loss, new_state, lambda, constraint).
  """
  lagrange = lagrange_multiplier(v, rate)
  loss, new_state, constraint = geco_constrained_loss(rec, kl_sum, lagrange,
                                                      state, kappa, decay)
  return loss, new_state, lagrange, constraint


def weight_decay_loss(params, weight_decay: float) -> jax.Array:
  """`weight_decay / 2 * sum(w^2)` over conv kernels (named `w`), not biases
  (TF's `l2_regularizer` convention)."""
  leaves = [x for path, x in jax.tree_util.tree_leaves_with_path(params)
            if getattr(path[-1], 'key', None) == 'w']
  return 0.5 * weight_decay * sum(jnp.sum(jnp.square(x)) for x in leaves)
