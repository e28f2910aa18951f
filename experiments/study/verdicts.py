"""The synthetic study's pre-registered criteria, decided from its results.

The criteria and their thresholds were committed (docs/synthetic_study.md,
"Criteria of the v3 study") before any run they judge; this module computes
each from the results JSON's numbers and never changes them after the fact.
Every verdict carries the numbers it was decided on.

(a) every HPU-Net seed's exact GED^2 below every sPU-Net seed's;
(b) HPU-Net pooled exact GED^2 and GED^2_100 within `ORACLE_MARGIN` of the
    oracle's, HPU-Net IoU_rec >= 0.95, sPU-Net IoU_rec < 0.85;
(c) HPU-Net style coherence >= 0.9 with style TV <= 0.1, and the
    local-latents ablation failing that joint test;
(d) the global- and the local-latents ablations worse than the HPU-Net on
    exact GED^2 by more than the largest seed std of the three;
(e) the coarsest latent level carries the style: sampled alone it gives the
    largest style disagreement of the single levels, at least half the
    true one;
(f) every GECO run ended converged (a seed without a recorded verdict
    counts as not converged).
"""
from typing import Any, Dict, Mapping, Sequence

from experiments.study import options as study_options

ORACLE_MARGIN = 0.03
IOU_REC_HPUNET_MIN = 0.95
IOU_REC_SPUNET_MAX = 0.85
COHERENCE_MIN = 0.9
STYLE_TV_MAX = 0.1
STYLE_SHARE_OF_TRUTH_MIN = 0.5


def _verdict(passed: bool, **numbers) -> Dict[str, Any]:
  return dict(passed=bool(passed), **numbers)


def hpunet_below_spunet(lesions: Mapping[str, Any]) -> Dict[str, Any]:
  """(a): max over HPU-Net seeds < min over sPU-Net seeds, exact GED^2."""
  hpunet = lesions['hpunet']['seed_means']['exact_ged']
  spunet = lesions['spunet']['seed_means']['exact_ged']
  return _verdict(max(hpunet) < min(spunet), hpunet_seeds=hpunet,
                  spunet_seeds=spunet)


def close_to_oracle(lesions: Mapping[str, Any]) -> Dict[str, Any]:
  """(b): HPU-Net near the oracle and reconstructing; sPU-Net not."""
  hpunet, oracle = lesions['hpunet'], lesions['hpunet']['oracle']
  gaps = {name: hpunet[name] - oracle[name]
          for name in ('exact_ged', 'ged_100')}
  passed = (all(gap <= ORACLE_MARGIN for gap in gaps.values())
            and hpunet['iou_rec'] >= IOU_REC_HPUNET_MIN
            and lesions['spunet']['iou_rec'] < IOU_REC_SPUNET_MAX)
  return _verdict(passed, gap_to_oracle=gaps,
                  hpunet_iou_rec=hpunet['iou_rec'],
                  spunet_iou_rec=lesions['spunet']['iou_rec'])


def _coherent(entry: Mapping[str, Any]) -> bool:
  return (entry['style_coherence'] >= COHERENCE_MIN
          and entry['style_tv'] <= STYLE_TV_MAX)


def style_drawn_once(lesions: Mapping[str, Any]) -> Dict[str, Any]:
  """(c): the hierarchy draws one style per grading; local latents do not."""
  numbers = {variant: {name: lesions[variant][name]
                       for name in ('style_coherence', 'style_tv')}
             for variant in ('hpunet', 'local_latents')}
  return _verdict(_coherent(lesions['hpunet'])
                  and not _coherent(lesions['local_latents']), **numbers)


def ablations_worse(lesions: Mapping[str, Any]) -> Dict[str, Any]:
  """(d): both ablations' exact GED^2 above the HPU-Net's by more than the
  largest seed std (sample std over seeds) of the three variants."""
  variants = ('hpunet', 'global_latents', 'local_latents')
  largest_std = max(lesions[v]['seed_std']['exact_ged'] or 0.0
                    for v in variants)
  margins = {v: lesions[v]['exact_ged'] - lesions['hpunet']['exact_ged']
             for v in variants[1:]}
  return _verdict(all(m > largest_std for m in margins.values()),
                  margin_over_hpunet=margins, largest_seed_std=largest_std)


def coarsest_level_carries_style(per_level: Mapping[str, Any]
                                 ) -> Dict[str, Any]:
  """(e): from the per-level analysis (`settings`: `level_<l>` sampled
  alone, `truth`)."""
  settings = per_level['settings']
  singles = {name: values['p_style_differs']
             for name, values in settings.items()
             if name.startswith('level_')}
  truth = settings['truth']['p_style_differs']
  coarsest = singles['level_0']
  return _verdict(coarsest == max(singles.values())
                  and coarsest >= STYLE_SHARE_OF_TRUTH_MIN * truth,
                  p_style_differs=singles, truth=truth)


def geco_runs_converged(entries: Mapping[str, Mapping[str, Any]],
                        geco_variants: Sequence[str]) -> Dict[str, Any]:
  """(f): `entries` maps '<task>:<variant>' to a results entry with its
  per-seed `converged` list."""
  verdicts = {name: entries[name].get('converged') or []
              for name in geco_variants}
  return _verdict(all(v and all(c is True for c in v)
                      for v in verdicts.values()), converged=verdicts)


def study_verdicts(lesions: Mapping[str, Any], per_level: Mapping[str, Any],
                   entries: Mapping[str, Mapping[str, Any]],
                   geco_variants: Sequence[str]) -> Dict[str, Any]:
  """Criterion -> verdict (`passed` and its numbers)."""
  return {
      'a_hpunet_below_spunet': hpunet_below_spunet(lesions),
      'b_close_to_oracle': close_to_oracle(lesions),
      'c_style_drawn_once': style_drawn_once(lesions),
      'd_ablations_worse': ablations_worse(lesions),
      'e_coarsest_level_carries_style': coarsest_level_carries_style(
          per_level),
      'f_geco_runs_converged': geco_runs_converged(entries, geco_variants),
  }


def verdicts_of_study(written: Mapping[str, Mapping[str, Any]],
                      options: study_options.StudyOptions) -> Dict[str, Any]:
  """The verdicts of a study run (`written`: task -> its results), or
  `{'not_decided': reason}` when it lacks a variant or metric they need
  (a subset of variants, or runs evaluated before the metric existed)."""
  lesions = written.get(study_options.LESIONS)
  if lesions is None:
    return {'not_decided': 'no synthetic_lesions results'}
  entries, geco = {}, []
  for task, results in written.items():
    for variant in results['variants']:
      name = f'{task}:{variant}'
      entries[name] = results[variant]
      config = study_options.make_config(task, variant, 0, options)
      if config.loss.objective == 'geco':
        geco.append(name)
  try:
    return study_verdicts(lesions, lesions['per_level'], entries, geco)
  except (KeyError, TypeError) as e:
    return {'not_decided': f'the results lack {e}'}
