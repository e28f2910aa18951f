"""Diagnostics of the synthetic study: why a run is where it is.

* `training_end`: the training scalars (GECO's lambda, the reconstruction
  loss per pixel, the KL per latent level) averaged over the last logged
  steps of a run's `metrics.jsonl`.
* `answer_entropy_nats`: the exact entropy of each test image's answer
  distribution (its enumerated gradings): the information a perfect model's
  latents must carry; a posterior whose KL to the prior is far above it has
  not been pulled onto the prior.
* `geco_lambda_at_lr_rate`: about the largest lambda GECO can reach in a
  run. The Lagrange parameter `v` (`lambda = softplus(v)^2`, `lambda_0 = 1`)
  is trained by the same Adam as the weights, whose step is about the
  learning rate whatever the size of the constraint: `v` rises by at most
  about `sum_t lr_t` (exactly that for a gradient of constant size; a little
  more when the gradient grows, as `d lambda / d v` does with `v`). This
  holds for the authors' `loss.geco_multiplier='adam'` rule only; the
  `multiplicative` rule of the v2 lesion configs is not bound by the
  learning rate, so the study reports the bound for `adam` variants only.
* `diagnostics_section`: the study's `diagnostics` entry of one task.
"""
import json
import math
import os
from typing import Any, Dict, Mapping, Sequence

import ml_collections
import numpy as np

from datasets import pipeline
from experiments.study import options as study_options

# Scalars of `metrics.jsonl` kept by `training_end` (plus every `kl_<l>`).
TRAINING_KEYS = ('lambda', 'rec_mean', 'kl_sum', 'constraint')


def training_end(run_dir: str, num_rows: int = 5) -> Dict[str, float]:
  """Mean of the last `num_rows` logged training rows of a run.

  Args:
    run_dir: a training workdir (holds `metrics.jsonl`).
    num_rows: logged rows averaged (the step-to-step noise is large).

  Returns:
    `{'step': last step, 'lambda': ..., 'rec_mean': ..., 'kl_0': ...}` with
    the keys the run logged; `{}` when it has no training rows.
  """
  path = os.path.join(run_dir, 'metrics.jsonl')
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  rows = [r for r in rows if 'rec_mean' in r][-num_rows:]
  if not rows:
    return {}
  keys = [k for k in rows[-1]
          if k in TRAINING_KEYS or (k.startswith('kl_') and k != 'kl_sum')]
  out = {'step': int(rows[-1]['step'])}
  out.update({k: float(np.mean([r[k] for r in rows if k in r]))
              for k in sorted(keys)})
  return out


def mean_training_end(ends: Sequence[Mapping[str, float]]
                      ) -> Dict[str, float]:
  """Averages `training_end` dicts over seeds (keys all seeds have)."""
  ends = [e for e in ends if e]
  if not ends:
    return {}
  keys = set(ends[0]).intersection(*ends[1:])
  return {k: float(np.mean([e[k] for e in ends])) for k in sorted(keys)}


def answer_entropy_nats(mode_probs: Sequence[np.ndarray]) -> Dict[str, float]:
  """Mean and std over images of the entropy of the exact answer
  distribution, in nats.

  Args:
    mode_probs: per image, the probabilities `[M]` of its distinct gradings
      (`generator.enumerate_modes`; the eval examples' `mode_probs`).
  """
  entropies = []
  for probs in mode_probs:
    probs = np.asarray(probs, np.float64)
    probs = probs[probs > 0]
    entropies.append(float(-np.sum(probs * np.log(probs))))
  return {'mean': float(np.mean(entropies)), 'std': float(np.std(entropies)),
          'num_images': len(entropies)}


def geco_lambda_at_lr_rate(config: ml_collections.ConfigDict) -> float:
  """Lambda after `config.num_train_steps` if `v` rose by the learning
  rate at every step: `softplus(v_0 + sum_t lr_t)^2`, `softplus(v_0) = 1`
  (Adam's step for an ascent gradient of constant size)."""
  boundaries = list(config.optimizer.boundaries)
  rates = list(config.optimizer.learning_rates)
  total, start = 0.0, 0
  for end, rate in zip(boundaries + [config.num_train_steps], rates):
    end = min(end, config.num_train_steps)
    total += rate * max(0, end - start)
    start = end
  v0 = math.log(math.e - 1.0)  # softplus(v0) = 1.
  return math.log1p(math.exp(v0 + total)) ** 2


def diagnostics_section(task: str, variants: Sequence[str],
                        options: study_options.StudyOptions) -> Dict[str, Any]:
  """GECO's multiplier rule per variant, the lambda it can reach at Adam's
  full rate (the authors' `adam` rule only: the `multiplicative` one is not
  bound by the learning rate) and, on the lesions, the entropy of the exact
  answer distributions (the functions above)."""
  out = {'geco_multiplier': {}, 'geco_lambda_at_lr_rate': {}}
  for variant in variants:
    config = study_options.make_config(task, variant, 0, options)
    if config.loss.objective != 'geco':
      continue
    out['geco_multiplier'][variant] = config.loss.geco_multiplier
    if config.loss.geco_multiplier == 'adam':
      out['geco_lambda_at_lr_rate'][variant] = (
          geco_lambda_at_lr_rate(config))
  if task == study_options.LESIONS:
    config = study_options.make_config(task, variants[0], 0, options)
    out['answer_entropy_nats'] = answer_entropy_nats([
        e['mode_probs'] for e in pipeline.eval_examples(
            config.data, config.eval.split, limit=config.eval.num_examples)])
  return out
