"""The study's pre-registered criteria on hand-built results."""
import copy

import pytest

from experiments.study import verdicts


def _entry(exact_ged, seeds, seed_std, iou_rec, coherence=1.0, tv=0.05,
           ged_100=0.2, converged=(True, True, True)):
  return dict(exact_ged=exact_ged, ged_100=ged_100, iou_rec=iou_rec,
              style_coherence=coherence, style_tv=tv,
              seed_means=dict(exact_ged=list(seeds)),
              seed_std=dict(exact_ged=seed_std),
              oracle=dict(exact_ged=0.007, ged_100=0.175),
              converged=list(converged))


def _lesions():
  return dict(
      hpunet=_entry(0.03, (0.02, 0.03, 0.04), 0.01, 0.98, ged_100=0.19),
      spunet=_entry(0.08, (0.07, 0.08, 0.09), 0.01, 0.70, coherence=0.95),
      global_latents=_entry(0.09, (0.085, 0.095), 0.007, 0.96),
      local_latents=_entry(0.06, (0.055, 0.065), 0.007, 0.97,
                           coherence=0.40, tv=0.05))


PER_LEVEL = dict(settings=dict(
    level_0=dict(p_style_differs=0.50), level_1=dict(p_style_differs=0.10),
    level_2=dict(p_style_differs=0.02), truth=dict(p_style_differs=0.625)))


def test_everything_passes_on_a_reproducing_study():
  lesions = _lesions()
  entries = {f'lesions:{v}': lesions[v] for v in lesions}
  out = verdicts.study_verdicts(lesions, PER_LEVEL, entries,
                                ['lesions:hpunet', 'lesions:local_latents'])
  assert {k: v['passed'] for k, v in out.items()} == {
      'a_hpunet_below_spunet': True, 'b_close_to_oracle': True,
      'c_style_drawn_once': True, 'd_ablations_worse': True,
      'e_coarsest_level_carries_style': True, 'f_geco_runs_converged': True}
  assert out['b_close_to_oracle']['gap_to_oracle'] == pytest.approx(
      {'exact_ged': 0.023, 'ged_100': 0.015})
  # (d): the margins 0.06 and 0.03 over HPU-Net's exact GED^2 against the
  # largest seed std, 0.01.
  assert out['d_ablations_worse']['largest_seed_std'] == 0.01
  assert out['d_ablations_worse']['margin_over_hpunet'] == pytest.approx(
      {'global_latents': 0.06, 'local_latents': 0.03})


def test_each_criterion_fails_where_its_numbers_say():
  lesions = _lesions()
  lesions['hpunet']['seed_means']['exact_ged'][2] = 0.075  # Above 0.07.
  assert not verdicts.hpunet_below_spunet(lesions)['passed']
  lesions = _lesions()
  lesions['hpunet']['exact_ged'] = 0.038  # 0.031 above the oracle.
  assert not verdicts.close_to_oracle(lesions)['passed']
  lesions = _lesions()
  lesions['spunet']['iou_rec'] = 0.85  # Must be below 0.85.
  assert not verdicts.close_to_oracle(lesions)['passed']
  lesions = _lesions()
  lesions['local_latents']['style_coherence'] = 0.92  # Passes the test too.
  assert not verdicts.style_drawn_once(lesions)['passed']
  lesions = _lesions()
  lesions['hpunet']['style_tv'] = 0.11
  assert not verdicts.style_drawn_once(lesions)['passed']
  lesions = _lesions()
  lesions['local_latents']['seed_std']['exact_ged'] = 0.04  # > 0.03 margin.
  assert not verdicts.ablations_worse(lesions)['passed']
  per_level = copy.deepcopy(PER_LEVEL)
  per_level['settings']['level_1']['p_style_differs'] = 0.6  # The 2x2 level.
  assert not verdicts.coarsest_level_carries_style(per_level)['passed']
  per_level = copy.deepcopy(PER_LEVEL)
  per_level['settings']['level_0']['p_style_differs'] = 0.3  # < 0.3125.
  assert not verdicts.coarsest_level_carries_style(per_level)['passed']


def test_a_seed_without_a_verdict_is_not_converged():
  lesions = _lesions()
  lesions['hpunet']['converged'] = [True, None, True]
  out = verdicts.geco_runs_converged({'lesions:hpunet': lesions['hpunet']},
                                     ['lesions:hpunet'])
  assert not out['passed']
  assert out['converged'] == {'lesions:hpunet': [True, None, True]}
  assert not verdicts.geco_runs_converged({'x': {}}, ['x'])['passed']
