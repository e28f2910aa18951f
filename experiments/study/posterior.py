"""The posterior of the synthetic study's lesion models.

The first (v1) study's local-latents-only model reconstructed with IoU_rec
0.27, its posterior-mean reconstructions showing lesions for empty
gradings. IoU_rec is measured from the posterior *mean*; training decodes
posterior *samples*. Here both are measured on the same gradings, with the
posterior's and the (teacher-forced) prior's mean sigma per latent level:

* `iou_rec_posterior_mean`: IoU of the posterior-mean reconstruction with
  each grading, averaged over the image's graders (the evaluator's
  `iou_rec`, both-empty = 1);
* `iou_rec_posterior_sample`: the same for reconstructions decoded from
  posterior samples (the training path, `model.train_forward`), averaged
  over graders and samples;
* `iou_rec_empty_posterior_mean`, `iou_rec_empty_posterior_sample`: the
  same over the image's *empty* gradings only (1 when the reconstruction is
  empty too; nan for an image without an empty grading);
* `posterior_sigma_<h>x<w>`, `prior_sigma_<h>x<w>`: `exp(log_std)` averaged
  over the level's positions and latent dims and over the graders, named by
  the level's grid (`1x1` the most global); read from the last posterior
  sample's pass (below the coarsest level both depend on the coarser
  levels' sampled latents).

A gap between the two IoUs says the decoder relies on the sampling noise (or
the mean is off the posterior's support); a posterior sigma near 1 at a
level says that level carries no information about the grading.

Shape glossary: `B` images, `G` graders, `H, W` image size, `K` classes.
"""
from typing import Any, Dict, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from eval import metrics
from experiments.study import analysis as study_analysis
from experiments.study import options as study_options
from experiments.study import runs as study_runs
from experiments.study.options import LESIONS, StudyOptions


def _mean_sigmas(prefix: str, dists: Sequence[Any], num_images: int,
                 num_graders: int) -> Dict[str, np.ndarray]:
  """`<prefix>_sigma_<h>x<w>` -> float64 `[B]` from per-level Gaussians of
  `B * G` (image, grading) rows."""
  out = {}
  for dist in dists:
    log_std = np.asarray(dist.log_std, np.float64)  # [B*G, h, w, D]
    per_row = np.exp(log_std).reshape(len(log_std), -1).mean(axis=1)
    name = f'{prefix}_sigma_{log_std.shape[1]}x{log_std.shape[2]}'
    out[name] = per_row.reshape(num_images, num_graders).mean(axis=1)
  return out


def _ious(recon: np.ndarray, graders: np.ndarray):
  """IoU per grading (`recon`, `graders` bool `[G, H, W]`): all and empty."""
  values = np.array([metrics.iou(r, g) for r, g in zip(recon, graders)])
  empty = ~graders.reshape(len(graders), -1).any(axis=1)
  return values, values[empty]


def posterior_per_image(model, params, examples: Sequence[Mapping[str, Any]],
                        *, num_samples: int, batch_size: int,
                        seed: int) -> Dict[str, np.ndarray]:
  """The module docstring's scores per test image.

  Args:
    model: a `hpunet_jax.models.Model` of a binary lesion task.
    params: its trained parameters.
    examples: synthetic-lesions eval examples (`image` `[H, W, C]`,
      `graders` `[G, H, W]`).
    num_samples: posterior samples per (image, grading).
    batch_size: images per batch (each with all its gradings).
    seed: seeds the posterior samples.

  Returns:
    `metric -> float64 [num_images]` (nan where undefined).
  """
  reconstruct = jax.jit(model.reconstruct)
  train_forward = jax.jit(model.train_forward)
  key = jax.random.PRNGKey(seed)
  out: Dict[str, list] = {}
  for start in range(0, len(examples), batch_size):
    batch = examples[start:start + batch_size]
    graders = np.stack([np.asarray(e['graders']) > 0 for e in batch])
    num_images, num_graders = graders.shape[:2]
    # One row per (image, grading): [B*G, H, W, C] and [B*G, H, W].
    images = jnp.asarray(np.repeat(np.stack([e['image'] for e in batch]),
                                   num_graders, axis=0))
    segs = jnp.asarray(graders.reshape((-1,) + graders.shape[2:]),
                       jnp.int32)
    mean_fg = np.asarray(jnp.argmax(reconstruct(params, images, segs),
                                    axis=-1) == 1)
    sample_fg = []
    for _ in range(num_samples):
      key, sample_key = jax.random.split(key)
      outputs = train_forward(params, sample_key, images, segs)
      sample_fg.append(np.asarray(jnp.argmax(outputs.logits, axis=-1) == 1))
    scores = _mean_sigmas('posterior', outputs.posterior, num_images,
                          num_graders)
    scores.update(_mean_sigmas('prior', outputs.prior, num_images,
                               num_graders))
    for name, values in scores.items():
      out.setdefault(name, []).extend(values)
    mean_fg = mean_fg.reshape(graders.shape)
    sample_fg = np.stack(sample_fg).reshape((num_samples,) + graders.shape)
    for i in range(num_images):
      everything, empty = _ious(mean_fg[i], graders[i])
      per_sample = [_ious(s[i], graders[i]) for s in sample_fg]
      row = {
          'iou_rec_posterior_mean': everything.mean(),
          'iou_rec_posterior_sample': np.mean([a.mean() for a, _ in
                                               per_sample]),
          'iou_rec_empty_posterior_mean': (empty.mean() if empty.size
                                           else np.nan),
          'iou_rec_empty_posterior_sample': (
              np.mean([e.mean() for _, e in per_sample]) if empty.size
              else np.nan)}
      for name, value in row.items():
        out.setdefault(name, []).append(float(value))
  return {name: np.asarray(v, np.float64) for name, v in out.items()}


def posterior_section(options: StudyOptions) -> Dict[str, Any]:
  """`posterior_per_image` of every lesion variant and seed (cached in each
  run's folder), pooled over the seeds like the evaluation's metrics."""
  out: Dict[str, Any] = {
      'num_images': options.posterior_images,
      'num_samples': options.posterior_samples,
      'note': ('iou_rec_posterior_mean is the evaluation\'s iou_rec on these '
               'images; _sample decodes posterior samples (the training '
               'path); _empty: only the empty gradings; sigma: exp(log_std) '
               'averaged per level, named by its grid (1x1 most global).')}
  cache_name = (f'posterior_{options.posterior_images}x'
                f'{options.posterior_samples}.npz')
  for variant in options.lesion_variants:
    per_seed = []
    for seed in range(study_options.seeds_of(options, LESIONS, variant)):
      per_seed.append(study_runs.cached_run_arrays(
          options, LESIONS, variant, seed, cache_name,
          options.posterior_images,
          lambda run, examples, config, seed=seed: posterior_per_image(
              run.model, run.params, examples,
              num_samples=options.posterior_samples,
              batch_size=config.eval.batch_size, seed=seed)))
    out[variant] = study_analysis.pool_seeds(per_seed, options.num_resamples,
                                             rng_seed=0)
    out[variant]['num_seeds'] = len(per_seed)
  return out


def format_posterior(section: Mapping[str, Any],
                     variants: Sequence[str]) -> str:
  """The section as a table (one row per variant)."""
  rows = {v: section[v] for v in variants if v in section}
  columns = study_analysis.metric_columns(list(rows.values()), (
      'iou_rec_posterior_mean', 'iou_rec_posterior_sample',
      'iou_rec_empty_posterior_mean', 'iou_rec_empty_posterior_sample'))
  return study_analysis.format_table(rows, columns)
