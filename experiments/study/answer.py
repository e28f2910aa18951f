"""Where a lesion model's distance to the answer comes from.

`exact_ged` (GED^2 against the enumerated answer distribution) mixes two
kinds of error: samples whose pixels are off every true grading, and
samples that are true gradings drawn with the wrong probabilities. Each of
the model's prior samples is decoded into the grading it stands for (grader
style and lesion subset, `study_analysis.decode_lesion_samples`) and
replaced by that grading's exact mask ("snapped"). Per test image:

* `exact_ged`: of the raw samples (as the evaluator, these images);
* `exact_ged_snapped`: of the snapped samples, the part that the
  probabilities alone explain (0 for a perfect sampler of the answer);
* `mode_iou`: mean IoU of a sample with its snapped grading (1 when every
  sample is a true grading pixel for pixel);
* `sample_style_tv`: total-variation distance of the decoded styles'
  histogram (one style per sample with a lesion) from the true style
  probabilities (the evaluation's `style_tv` pools every present lesion's
  style instead, `eval/lesion_styles.py`);
  `style_frac_<s>` that histogram (`s` indexes `style_scales`: v2 erode /
  keep / dilate);
* `presence_mae`, `presence_bias`: mean |rate - p| and mean (rate - p) of
  each lesion's presence rate over the samples against its probability;
* `frac_empty`: fraction of samples with no lesion (`frac_empty_truth`:
  `prod_i (1 - p_i)`).

The same scores of as many oracle samples (true-distribution draws through
the same decoder) give each score's floor at this sample count.

Shape glossary: `S` samples, `N` lesions, `H, W` image size, `M` modes.
"""
from typing import Any, Dict, Mapping, Sequence

import numpy as np

from datasets.synthetic_lesions import generator
from eval import metrics
from experiments.study import analysis as study_analysis
from experiments.study import options as study_options
from experiments.study import runs as study_runs
from experiments.study.options import LESIONS, StudyOptions


def snapped_gradings(styles: np.ndarray, present: np.ndarray,
                     params) -> np.ndarray:
  """bool `[S, H, W]`: the exact grading of each decoded sample.

  Args:
    styles: int `[S]` from `decode_lesion_samples` (-1: nothing present).
    present: bool `[S, N]`.
    params: the image's generating parameters (v1 or v2).
  """
  field = params.style_field()  # [N, H, W]
  scales = np.asarray(params.style_scales, np.float64)
  inside = field[None] <= scales[:, None, None, None]  # [styles, N, H, W]
  chosen = inside[np.maximum(styles, 0)]  # [S, N, H, W]
  return np.any(chosen & present[:, :, None, None], axis=1)


def answer_scores(samples: np.ndarray, params, modes: np.ndarray,
                  mode_probs: np.ndarray,
                  presence_threshold: float) -> Dict[str, float]:
  """The module docstring's scores of one image's samples.

  Args:
    samples: bool `[S, H, W]` foreground masks.
    params: the image's generating parameters.
    modes: bool `[M, H, W]` the enumerated gradings.
    mode_probs: float `[M]`.
    presence_threshold: see `study_analysis.decode_lesion_samples`.
  """
  samples = np.asarray(samples, bool)
  styles, present = study_analysis.decode_lesion_samples(
      samples, params, presence_threshold)
  snapped = snapped_gradings(styles, present, params)
  style_probs = np.asarray(params.style_probs, np.float64)
  style_probs = style_probs / style_probs.sum()
  defined = styles[styles >= 0]
  if len(defined):
    hist = np.bincount(defined, minlength=len(style_probs)) / len(defined)
  else:
    hist = np.full(len(style_probs), np.nan)
  lesion_probs = np.asarray(params.probs, np.float64)
  rates = present.mean(axis=0)  # [N]
  scores = {
      'exact_ged': metrics.weighted_generalized_energy_distance(
          samples, None, modes, mode_probs),
      'exact_ged_snapped': metrics.weighted_generalized_energy_distance(
          snapped, None, modes, mode_probs),
      'mode_iou': float(np.mean([metrics.iou(s, g)
                                 for s, g in zip(samples, snapped)])),
      'sample_style_tv': float(0.5 * np.sum(np.abs(hist - style_probs))),
      'presence_mae': float(np.mean(np.abs(rates - lesion_probs))),
      'presence_bias': float(np.mean(rates - lesion_probs)),
      'frac_empty': float(np.mean(styles < 0)),
      'frac_empty_truth': float(np.prod(1 - lesion_probs)),
  }
  for s, value in enumerate(hist):
    scores[f'style_frac_{s}'] = float(value)
  return {name: float(value) for name, value in scores.items()}


def answer_per_image(model, params, examples: Sequence[Mapping[str, Any]],
                     *, num_samples: int, batch_size: int, seed: int,
                     presence_threshold: float) -> Dict[str, np.ndarray]:
  """`answer_scores` of the model's prior samples and of oracle samples.

  Args:
    model: a `hpunet_jax.models.Model` of the binary lesion task.
    params: its trained parameters.
    examples: synthetic-lesions eval examples (`image`, `lesion_params`).
    num_samples: samples per image (model and oracle alike).
    batch_size: images sampled at once.
    seed: seeds the model's and the oracle's samples.
    presence_threshold: see `study_analysis.decode_lesion_samples`.

  Returns:
    `<metric>` (model) and `oracle.<metric>` -> float64 `[num_images]`.
  """
  np_rng = np.random.default_rng(seed)
  out: Dict[str, list] = {}
  for batch, labels in study_analysis.prior_labels_by_batch(
      model, params, examples, num_samples=num_samples,
      batch_size=batch_size, seed=seed):  # labels [S, B, H, W]
    for i, example in enumerate(batch):
      lesion_params = example['lesion_params']
      modes, probs = generator.enumerate_modes(lesion_params)
      oracle = generator.oracle_sample(lesion_params, np_rng, num_samples)
      for prefix, masks in (('', labels[:, i] == 1), ('oracle.', oracle > 0)):
        for name, value in answer_scores(masks, lesion_params, modes > 0,
                                         probs, presence_threshold).items():
          out.setdefault(prefix + name, []).append(value)
  return {name: np.asarray(v, np.float64) for name, v in out.items()}


def answer_section(options: StudyOptions) -> Dict[str, Any]:
  """`answer_per_image` of every lesion variant and seed on the per-level
  analysis' test images (cached in each run's folder), pooled over the
  seeds like the evaluation's metrics; the oracle rows under `oracle`."""
  out: Dict[str, Any] = {
      'num_images': options.per_level_images,
      'presence_threshold': options.presence_threshold,
      'note': ('samples decoded into (style, lesion subset) and snapped to '
               'that exact grading: exact_ged_snapped is the part of '
               'exact_ged that the probabilities explain, mode_iou the '
               'pixel fidelity; oracle: as many true-distribution samples.')}
  for variant in options.lesion_variants:
    per_seed, oracle = [], []
    for seed in range(study_options.seeds_of(options, LESIONS, variant)):
      def compute(run, examples, config, seed=seed):
        return answer_per_image(
            run.model, run.params, examples,
            num_samples=config.eval.num_samples,
            batch_size=config.eval.batch_size, seed=seed,
            presence_threshold=options.presence_threshold)
      stored = study_runs.cached_run_arrays(
          options, LESIONS, variant, seed,
          # 'answer2': `sample_style_tv` (was `style_tv` in 'answer_').
          f'answer2_{options.per_level_images}_t{options.presence_threshold}'
          '.npz', options.per_level_images, compute)
      per_seed.append({k: v for k, v in stored.items() if '.' not in k})
      oracle.append({k.split('.', 1)[1]: v for k, v in stored.items()
                     if k.startswith('oracle.')})
    out[variant] = study_analysis.pool_seeds(per_seed, options.num_resamples,
                                             rng_seed=0)
    out[variant]['num_seeds'] = len(per_seed)
    if len(oracle) > out.get('oracle', {}).get('num_seeds', 0):
      # The oracle draws depend only on the seed: keep the most seeds'.
      out['oracle'] = study_analysis.pool_seeds(
          oracle, options.num_resamples, rng_seed=0)
      out['oracle']['num_seeds'] = len(oracle)
  return out


ANSWER_COLUMNS = ('exact_ged', 'exact_ged_snapped', 'mode_iou',
                  'sample_style_tv', 'presence_mae', 'presence_bias',
                  'frac_empty')


def format_answer(section: Mapping[str, Any],
                  variants: Sequence[str]) -> str:
  """The section as a table (one row per variant, then the oracle)."""
  rows = {v: section[v] for v in list(variants) + ['oracle'] if v in section}
  return study_analysis.format_table(rows, ANSWER_COLUMNS)
