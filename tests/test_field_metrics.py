"""The other papers' LIDC metrics: hand-computed cases and independent forms."""
import itertools
import math
import statistics

import numpy as np
import pytest

from eval import bootstrap
from eval import evaluator
from eval import field_metrics
from eval import metrics
from eval import task_scores


def _masks(*pixel_sets, size=6):
  """bool `[len(pixel_sets), 1, size]` with the given pixels set."""
  out = np.zeros((len(pixel_sets), 1, size), bool)
  for i, pixels in enumerate(pixel_sets):
    out[i, 0, list(pixels)] = True
  return out


def _set_iou(a, b):
  """IoU of two pixel sets, both empty = 1 (written without numpy)."""
  union = a | b
  return 1.0 if not union else len(a & b) / len(union)


def _random_masks(rng, count, shape=(12, 12)):
  masks = np.zeros((count,) + shape, bool)
  for m in masks:
    if rng.random() < 0.8:  # Some empty masks, as in LIDC.
      r, c = rng.integers(0, 8, 2)
      m[r:r + rng.integers(1, 5), c:c + rng.integers(1, 5)] = True
  return masks


# --- Sample diversity --------------------------------------------------------


def test_diversity_hand_computed():
  # IoU(A, B) = 1/3, IoU(A, empty) = IoU(B, empty) = 0.
  samples = _masks({0, 1}, {1, 2}, set())
  # Ordered pairs: 2 (2/3 + 1 + 1) = 16/3; over 9 pairs or over 6.
  assert field_metrics.sample_diversity(samples) == pytest.approx(16 / 27)
  assert field_metrics.sample_diversity(
      samples, include_self_pairs=False) == pytest.approx(8 / 9)
  assert field_metrics.sample_diversity(_masks(set(), set())) == 0.0


def test_diversity_is_ged_within_term_and_matches_a_set_loop():
  rng = np.random.default_rng(0)
  samples, truths = _random_masks(rng, 7), _random_masks(rng, 4)
  sets = [set(np.flatnonzero(s)) for s in samples]
  loop = np.mean([1 - _set_iou(a, b) for a in sets for b in sets])
  assert field_metrics.sample_diversity(samples) == pytest.approx(loop)
  cross = np.mean(1 - metrics.pairwise_iou(samples, truths))
  for self_pairs in (True, False):
    ged = metrics.generalized_energy_distance(samples, truths, self_pairs)
    assert ged == pytest.approx(
        2 * cross
        - field_metrics.sample_diversity(samples, self_pairs)
        - field_metrics.sample_diversity(truths, self_pairs))


# --- HM-IoU with repeated ground truths ---------------------------------------


def test_repeat_gt_hand_computed_and_brute_force():
  a, b = {0, 1, 2}, {2, 3}  # IoU(a, b) = 1/4.
  truths = _masks(a, b)
  # 4 copies of a: matched twice with a (1) and twice with b (1/4).
  assert field_metrics.hungarian_matched_iou_repeat_gt(
      _masks(a, a, a, a), truths) == pytest.approx((2 + 2 * 0.25) / 4)
  rng = np.random.default_rng(1)
  samples, truths = _random_masks(rng, 6), _random_masks(rng, 3)
  iou = np.array([[_set_iou(set(np.flatnonzero(s)), set(np.flatnonzero(t)))
                   for t in truths] for s in samples])
  repeated = [j for j in range(3) for _ in range(2)]
  best = max(np.mean([iou[i, repeated[p]] for i, p in enumerate(perm)])
             for perm in itertools.permutations(range(6)))
  assert field_metrics.hungarian_matched_iou_repeat_gt(
      samples, truths) == pytest.approx(best)


def test_repeat_gt_equals_lcm_when_defined_and_refuses_otherwise():
  rng = np.random.default_rng(2)
  for num_samples in (4, 16, 100):
    samples, truths = _random_masks(rng, num_samples), _random_masks(rng, 4)
    assert field_metrics.hungarian_matched_iou_repeat_gt(
        samples, truths) == pytest.approx(
            metrics.hungarian_matched_iou(samples, truths))
  with pytest.raises(ValueError, match=r'\(6\) to be a multiple .* \(4\)'):
    field_metrics.hungarian_matched_iou_repeat_gt(_random_masks(rng, 6),
                                                  _random_masks(rng, 4))


# --- PHiSeg's NCC --------------------------------------------------------------


def _phiseg_variance_ncc(sample_arr, gt_arr):
  """PHiSeg's `utils.variance_ncc_dist` written out loop by loop."""
  def xent(m_samp, m_gt):
    return -np.sum(m_gt * np.log(m_samp + 1e-8), axis=-1)

  def ncc(a, v):
    a, v = a.flatten(), v.flatten()
    a = (a - np.mean(a)) / (np.std(a) * len(a))
    v = (v - np.mean(v)) / np.std(v)
    return np.correlate(a, v)[0]

  mean_seg = np.mean(sample_arr, axis=0)
  e_ss = np.mean([xent(s, mean_seg) for s in sample_arr], axis=0)
  e_sy = [np.mean([xent(s, g) for s in sample_arr], axis=0) for g in gt_arr]
  return np.mean([ncc(e_ss, e) for e in e_sy])


def test_ncc_matches_phiseg_definition():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(10, 9, 11, 2)) * 3
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  truths = _random_masks(rng, 4, shape=(9, 11)).astype(np.int64)
  expected = _phiseg_variance_ncc(probs, np.eye(2)[truths])
  assert field_metrics.variance_ncc(probs, truths) == pytest.approx(expected)
  # The binary helper gives the same classes from the foreground alone.
  assert field_metrics.variance_ncc(
      field_metrics.binary_class_probabilities(probs[..., 1]),
      truths) == pytest.approx(expected)


def test_ncc_hand_computed():
  # One sample, 3 pixels, foreground probabilities 1/2, 1/4, 1 (class 0
  # probabilities 1/2, 3/4, 0). E_ss = the sample's entropy per pixel;
  # E_sy = -log of the probability of the ground-truth class (1, 1, 0).
  eps = 1e-8
  e_ss = [-(0.5 * math.log(0.5 + eps) + 0.5 * math.log(0.5 + eps)),
          -(0.75 * math.log(0.75 + eps) + 0.25 * math.log(0.25 + eps)),
          -(1.0 * math.log(1.0 + eps) + 0.0 * math.log(0.0 + eps))]
  e_sy = [-math.log(0.5 + eps), -math.log(0.25 + eps), -math.log(0.0 + eps)]
  probs = field_metrics.binary_class_probabilities([[[0.5, 0.25, 1.0]]])
  value = field_metrics.variance_ncc(probs, np.array([[[1, 1, 0]]]))
  assert value == pytest.approx(statistics.correlation(e_ss, e_sy))
  # A constant map has no correlation: nan, as PHiSeg's 0 / 0.
  assert math.isnan(field_metrics.variance_ncc(
      field_metrics.binary_class_probabilities(np.full((2, 1, 3), 0.5)),
      np.zeros((1, 1, 3), np.int64)))


# --- Pixel ECE -------------------------------------------------------------


def test_ece_hand_computed():
  # Bins [0, .1): p .05, .05 vs targets 0, .25 -> |.05 - .125| = .075, 2 px;
  # [.5, .6): .55 vs .5; [.9, 1]: .95 vs 1 (1 px each).
  value = field_metrics.pixel_ece([0.05, 0.05, 0.55, 0.95],
                                  [0.0, 0.25, 0.5, 1.0])
  assert value == pytest.approx(0.5 * 0.075 + 0.25 * 0.05 + 0.25 * 0.05)
  # Samples agreeing with the graders' fractions: perfectly calibrated.
  fractions = np.array([0, 0.25, 0.5, 0.75, 1.0])
  assert field_metrics.pixel_ece(fractions, fractions) == 0.0
  # p = 1 falls in the last bin.
  assert field_metrics.pixel_ece([1.0], [0.0]) == 1.0
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    field_metrics.pixel_ece([1.5], [1.0])


def test_ece_matches_a_per_bin_loop():
  rng = np.random.default_rng(4)
  p = rng.integers(0, 17, 500) / 16  # Sample fractions of 16 samples.
  y = rng.integers(0, 5, 500) / 4    # Graders' fractions of 4 graders.
  edges = np.linspace(0, 1, 11)
  total = 0.0
  for low, high in zip(edges[:-1], edges[1:]):
    inside = (p >= low) & ((p < high) | (high == 1.0))
    if inside.any():
      total += inside.mean() * abs(p[inside].mean() - y[inside].mean())
  assert field_metrics.pixel_ece(p, y) == pytest.approx(total)


# --- Protocol options in the lesion scores -------------------------------------


def _identity(image, segmentation):
  del image
  return np.asarray(segmentation)


def test_lesion_scores_report_field_metrics_under_a_protocol():
  rng = np.random.default_rng(5)
  graders = _random_masks(rng, 4, shape=(16, 16)).astype(np.int32)
  example = {'image': np.zeros((16, 16, 1), np.float32), 'graders': graders,
             'mask': np.ones((16, 16), np.float32), 'subset_b': True}
  samples = _random_masks(rng, 20, shape=(16, 16)).astype(np.int32)
  foreground = rng.uniform(size=(20, 16, 16))
  probs = np.stack([1 - foreground, foreground], axis=-1)
  protocol = task_scores.LesionProtocol(few_samples=8,
                                        hm_iou_convention='repeat_gt',
                                        ged_self_pairs=False)
  values, _, _ = task_scores.score_lesions(example, samples, _identity, rng,
                                           protocol, probs)
  fg = samples > 0
  assert values['ged_8'] == pytest.approx(metrics.generalized_energy_distance(
      fg[:8], graders > 0, include_self_pairs=False))
  assert values['diversity_20'] == pytest.approx(
      field_metrics.sample_diversity(fg, include_self_pairs=False))
  assert values['hm_iou'] == pytest.approx(
      metrics.hungarian_matched_iou(fg[:8], graders > 0))
  assert values['ged_8_subset_b'] == values['ged_8']
  assert values['ece'] == pytest.approx(field_metrics.pixel_ece(
      fg.mean(0), (graders > 0).mean(0)))
  assert values['ncc'] == pytest.approx(_phiseg_variance_ncc(
      probs, np.eye(2)[graders]))
  with pytest.raises(ValueError, match='hm_iou_convention'):
    task_scores.LesionProtocol(hm_iou_convention='hungarian').check()
  with pytest.raises(ValueError, match='ece_convention'):
    task_scores.LesionProtocol(ece_convention='guo').check()
  with pytest.raises(ValueError, match="'ssn' needs the samples' softmax"):
    task_scores.score_lesions(example, samples, _identity, rng,
                              protocol._replace(ece_convention='ssn'))


# --- The peers' ECE conventions --------------------------------------------


def _hand_example():
  """1x2 image, 20 samples: 10 and 9 mark the pixels, with a foreground
  softmax whose means are [.50, .45]; 3 and 1 of 4 graders mark them."""
  samples = np.zeros((20, 1, 2), np.int32)
  samples[:10, 0, 0] = 1
  samples[:9, 0, 1] = 1
  foreground = np.empty((20, 1, 2))
  foreground[:, 0, 0] = np.where(samples[:, 0, 0], 0.9, 0.1)  # Mean .5.
  foreground[:, 0, 1] = np.where(samples[:, 0, 1], 0.9, 0.9 / 11)  # .45.
  graders = np.array([[[1, 1]], [[1, 0]], [[1, 0]], [[0, 0]]], np.int32)
  return samples, np.stack([1 - foreground, foreground], axis=-1), graders


def test_ece_conventions_on_the_hand_example():
  samples, probs, graders = _hand_example()
  np.testing.assert_allclose(probs[..., 1].mean(0), [[0.5, 0.45]])
  # Ours: bins [.5, .6) and [.4, .5): (|.5 - .75| + |.45 - .25|) / 2.
  assert field_metrics.pixel_ece([0.5, 0.45], [0.75, 0.25]) == (
      pytest.approx(0.225))
  # MoSE: both in (.4, .5]: |.475 - .5|.
  assert field_metrics.ece_from_bins(field_metrics.calibration_bins(
      [0.5, 0.45], [0.75, 0.25], closed='right')) == pytest.approx(0.025)
  # SSN: foreground .225 as ours; background .5, .55 both in [.5, .6):
  # |.525 - .5| = .025; their mean .125.
  assert field_metrics.class_wise_ece(
      [[[0.5, 0.5], [0.55, 0.45]]], graders) == pytest.approx(0.125)
  example = {'image': np.zeros((1, 2, 1), np.float32), 'graders': graders,
             'mask': np.ones((1, 2), np.float32)}
  expected = {'sample_fraction': 0.225, 'ssn': 0.125}
  for convention, value in expected.items():
    protocol = task_scores.LesionProtocol(few_samples=4,
                                          ece_convention=convention)
    scores, _, _ = task_scores.score_lesions(
        example, samples, _identity, np.random.default_rng(0), protocol,
        probs.astype(np.float32))
    assert scores['ece'] == pytest.approx(value, abs=1e-7), convention
  protocol = task_scores.LesionProtocol(few_samples=4, ece_convention='mose')
  scores, _, _ = task_scores.score_lesions(
      example, samples, _identity, np.random.default_rng(0), protocol,
      probs.astype(np.float32))
  assert 'ece' not in scores
  assert field_metrics.ece_from_bins(scores['ece_bins']) == pytest.approx(
      0.025, abs=1e-7)


def test_mose_ece_pools_the_images_and_p0_counts_only_in_the_total():
  # Image a: p .05 (target 0), .35 (.5); image b: p .08 (.25), 0 (.5).
  a = field_metrics.calibration_bins([0.05, 0.35], [0.0, 0.5],
                                     closed='right')
  b = field_metrics.calibration_bins([0.08, 0.0], [0.25, 0.5],
                                     closed='right')
  assert b[0, 0] == 1 and b[2, 0] == 0.5  # p = 0: in no bin.
  # (0, .1]: |(.05 + .08) - (0 + .25)| = .12; (.3, .4]: .15; 4 pixels.
  assert field_metrics.ece_from_bins(a + b) == pytest.approx(0.27 / 4)
  # Not the mean of the images' ECEs ((.2 / 2 + .17 / 2) / 2).
  assert field_metrics.ece_from_bins(a) == pytest.approx(0.1)
  assert field_metrics.ece_from_bins(b) == pytest.approx(0.085)
  summary = evaluator._summarise(  # pylint: disable=protected-access
      {'ece_bins': [a, b]}, 50, seed=0)
  assert summary['ece'] == pytest.approx(0.0675)
  assert 0 < summary['ece_std'] < 0.1
  # A p = 0 pixel: MoSE leaves it out of every bin (its target ignored),
  # SSN's [0, .1) bin and ours hold it.
  assert field_metrics.ece_from_bins(field_metrics.calibration_bins(
      [0.0, 0.5], [1.0, 0.5], closed='right')) == 0.0
  assert field_metrics.ece_from_bins(field_metrics.calibration_bins(
      [0.0, 0.5], [1.0, 0.5], closed='left')) == 0.5
  assert field_metrics.pixel_ece([0.0, 0.5], [1.0, 0.5]) == 0.5
  # p = 1 is in the last bin on both sides.
  for closed in field_metrics.BIN_SIDES:
    bins = field_metrics.calibration_bins([1.0], [0.0], closed=closed)
    assert bins[0, -1] == 1 and field_metrics.ece_from_bins(bins) == 1.0


def test_bin_edges_are_the_peers_linspace_edges():
  edges = np.linspace(0, 1, 11)
  p = np.concatenate([edges, np.random.default_rng(7).uniform(size=200)])
  y = np.zeros_like(p)
  left = field_metrics.calibration_bins(p, y)[0]
  right = field_metrics.calibration_bins(p, y, closed='right')[0]
  for b in range(10):
    lo, hi = edges[b], edges[b + 1]
    assert left[b + 1] == np.sum((p >= lo) & ((p < hi) | (b == 9)))
    assert right[b + 1] == np.sum((p > lo) & (p <= hi))
  assert left[0] == 0 and right[0] == 1  # The single p = 0.
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    field_metrics.calibration_bins([np.nan], [0.0])
  with pytest.raises(ValueError, match='closed'):
    field_metrics.calibration_bins([0.5], [0.5], closed='both')


def test_pooled_bootstrap_std_matches_a_resampling_loop():
  rng = np.random.default_rng(8)
  per_image = np.stack([field_metrics.calibration_bins(
      rng.uniform(size=30) ** 3, rng.integers(0, 5, 30) / 4, closed='right')
                        for _ in range(6)])
  std = bootstrap.pooled_statistic_std(per_image, field_metrics.ece_from_bins,
                                       40, rng=3)
  draws = np.random.default_rng(3).integers(0, 6, size=(40, 6))
  loop = [field_metrics.ece_from_bins(per_image[d].sum(0)) for d in draws]
  assert std == pytest.approx(np.std(loop), rel=1e-12) and std > 0
