"""The training objective the trainer differentiates.

`loss_fn` composes the model's training forward pass with the losses of
`hpunet_jax.losses`: GECO (Eq. 6) or the ELBO (Eq. 5), each with the top-k
reconstruction term and the weight-decay term of Appx. D.

`loss_config` keys (a config's `loss` sub-dict):
  objective: 'geco' or 'elbo'.
  beta: KL weight of the ELBO.
  kappa: GECO's reconstruction target per pixel.
  geco_decay: decay of GECO's moving average (0.99 in the authors' code).
  geco_rate: gradient scale of the Lagrange parameter (1e-2).
  geco_multiplier: how lambda is updated. 'adam' (the authors' code):
    `lambda = softplus(v)^2`, v trained by the weights' Adam with its
    gradient scaled by `-geco_rate`. 'multiplicative' (a deviation for short
    runs, docs/paper_notes.md section 27): `lambda <- lambda * exp(geco_multiplier_rate * C)` with C
    the moving-average constraint per pixel, applied by the train step
    (`update_multiplier`); lambda gets no gradient.
  geco_multiplier_rate: the multiplicative rule's step per nat of C (> 0).
  geco_multiplier_rate_down: its step while C < 0 (> 0); None (or absent) =
    geco_multiplier_rate.
  top_k_fraction: fraction of the batch's pixels in the loss (0.02); 0 or
    None = all valid pixels.
  deterministic_top_k: pick the k largest losses instead of sampling.
  weight_decay: L2 factor on conv kernels (1e-5).
"""
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from hpunet_jax import choices
from hpunet_jax import losses
from hpunet_jax import models

OBJECTIVES = ('geco', 'elbo')
GECO_MULTIPLIERS = ('adam', 'multiplicative')


def multiplier_rule(loss_config: Mapping[str, Any]) -> str:
  """GECO's multiplier rule ('adam' or 'multiplicative'); ValueError naming
  the `loss` field when it or a multiplicative rate is invalid."""
  rule = loss_config['geco_multiplier']
  choices.check_choice('loss.geco_multiplier', rule, GECO_MULTIPLIERS)
  if rule == 'multiplicative':
    _check_rate('geco_multiplier_rate', loss_config['geco_multiplier_rate'])
    rate_down = loss_config.get('geco_multiplier_rate_down')
    if rate_down is not None:
      _check_rate('geco_multiplier_rate_down', rate_down)
  return rule


def _check_rate(name: str, rate: Any) -> None:
  if (isinstance(rate, bool) or not isinstance(rate, (int, float))
      or not math.isfinite(rate) or rate <= 0):
    raise ValueError(f'loss.{name} must be a finite number > 0 for the '
                     f"'multiplicative' rule, got {rate!r}.")


def init_trainable(model: models.Model, rng: jax.Array, image: jax.Array,
                   segmentation: jax.Array, loss_config: Mapping[str, Any]):
  """The trained pytree: `{'model': params}` plus, for GECO,
  `{'geco': {'v': v_0}}` ('adam' rule) or `{'geco': {'log_lambda': 0}}`
  ('multiplicative' rule; lambda starts at 1 either way)."""
  choices.check_choice('loss.objective', loss_config['objective'], OBJECTIVES)
  trainable = {'model': model.init(rng, image, segmentation)}
  if loss_config['objective'] == 'geco':
    if multiplier_rule(loss_config) == 'adam':
      trainable['geco'] = {'v': losses.initial_lagrange_parameter()}
    else:
      trainable['geco'] = {'log_lambda': jnp.zeros((), jnp.float32)}
  return trainable


def update_multiplier(trainable, scalars: Mapping[str, jax.Array],
                      loss_config: Mapping[str, Any]):
  """After the optimiser step: the multiplicative rule's new lambda.

  Identity for the ELBO and for the 'adam' rule (there the optimiser moves
  v). `scalars` are `loss_fn`'s of the same step.
  """
  if (loss_config['objective'] != 'geco' or
      multiplier_rule(loss_config) == 'adam'):
    return trainable
  log_lambda = losses.multiplicative_lagrange_update(
      trainable['geco']['log_lambda'], scalars['constraint_per_pixel'],
      loss_config['geco_multiplier_rate'],
      loss_config.get('geco_multiplier_rate_down'))
  return dict(trainable, geco={'log_lambda': log_lambda})


def init_geco_state() -> losses.GecoState:
  return losses.init_geco_state()


def loss_fn(trainable, geco_state: losses.GecoState, rng: jax.Array,
            batch: Mapping[str, jax.Array], *, model: models.Model,
            loss_config: Mapping[str, Any]):
  """Loss of one batch.

  Args:
    trainable: see `init_trainable`.
    geco_state: GECO's moving average (unused, returned as is, for the ELBO).
    rng: key for the posterior sample and the top-k Gumbel noise.
    batch: `image [B,H,W,C_in]`, `segmentation [B,H,W]` int, `mask [B,H,W]`.
    model: from `models.make_model`.
    loss_config: see the module docstring.

  Returns:
    `(loss, (new_geco_state, scalars))`, scalars a dict of float scalars:
    `loss, rec_sum, rec_mean, kl_sum, kl_<l>`, and for GECO `lambda,
    constraint, constraint_per_pixel` (`constraint / N`).
  """
  model_rng, top_k_rng = jax.random.split(rng)
  params = trainable['model']
  out = model.train_forward(params, model_rng, batch['image'],
                            batch['segmentation'])
  rec = losses.reconstruction_loss(
      out.logits, batch['segmentation'], batch['mask'], top_k_rng,
      top_k_fraction=loss_config['top_k_fraction'],
      deterministic_top_k=loss_config['deterministic_top_k'])
  kl_sum = jnp.sum(out.kl_per_level)
  scalars = {'rec_sum': rec.rec_sum, 'rec_mean': rec.rec_mean,
             'kl_sum': kl_sum}
  for level in range(out.kl_per_level.shape[0]):
    scalars[f'kl_{level}'] = out.kl_per_level[level]
  if loss_config['objective'] == 'geco':
    if multiplier_rule(loss_config) == 'adam':
      loss, geco_state, lagrange, constraint = losses.geco_loss(
          rec, kl_sum, trainable['geco']['v'], geco_state,
          kappa=loss_config['kappa'], decay=loss_config['geco_decay'],
          rate=loss_config['geco_rate'])
    else:
      # No gradient: the train step updates lambda (`update_multiplier`).
      lagrange = jnp.exp(jax.lax.stop_gradient(
          trainable['geco']['log_lambda']))
      loss, geco_state, constraint = losses.geco_constrained_loss(
          rec, kl_sum, lagrange, geco_state, kappa=loss_config['kappa'],
          decay=loss_config['geco_decay'])
    scalars['lambda'] = lagrange
    scalars['constraint'] = constraint
    scalars['constraint_per_pixel'] = constraint / jnp.maximum(
        rec.num_pixels, 1.0)
  elif loss_config['objective'] == 'elbo':
    loss = losses.elbo_loss(rec.rec_sum, kl_sum, loss_config['beta'])
  else:
    raise ValueError(f"loss.objective must be one of {OBJECTIVES}, got "
                     f"{loss_config['objective']!r}.")
  loss = loss + losses.weight_decay_loss(params, loss_config['weight_decay'])
  scalars['loss'] = loss
  return loss, (geco_state, scalars)
