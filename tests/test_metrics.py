"""Tests for eval.metrics and eval.bootstrap against hand-computed values."""
import itertools

import numpy as np
import pytest
from scipy import optimize
from scipy import sparse
from skimage import metrics as skimage_metrics

from eval import bootstrap
from eval import instance_metrics
from eval import metrics

# Masks on a 1 x 4 strip: IoU(A, B) = 1/3, IoU(A, C) = IoU(B, C) = 0.
A = np.array([[1, 1, 0, 0]], bool)
B = np.array([[0, 1, 1, 0]], bool)
C = np.zeros((1, 4), bool)


def stack(*masks):
  return np.stack(masks)


def test_iou_hand_cases():
  assert metrics.iou(C, C) == 1.0
  assert metrics.iou(A, C) == 0.0
  assert metrics.iou(A, A) == 1.0
  assert metrics.iou(A, ~A) == 0.0
  assert metrics.iou(A, B) == pytest.approx(1 / 3)
  # 4 vs 6 pixels sharing 2: 2 / 8.
  a = np.zeros((4, 4), bool)
  a[0, :] = True
  b = np.zeros((4, 4), bool)
  b[0, 2:] = True
  b[1, :] = True
  assert metrics.iou(a, b) == pytest.approx(0.25)


def test_iou_rejects_bad_inputs():
  with pytest.raises(ValueError, match='boolean'):
    metrics.iou(A.astype(int), A)
  with pytest.raises(ValueError, match='shapes differ'):
    metrics.iou(A, A.T)


def test_pairwise_iou_matches_scalar_iou():
  rng = np.random.default_rng(0)
  x = rng.random((5, 8, 9)) < 0.3
  y = rng.random((3, 8, 9)) < 0.5
  x[1] = False
  y[2] = False
  expected = np.array([[metrics.iou(a, b) for b in y] for a in x])
  np.testing.assert_allclose(metrics.pairwise_iou(x, y), expected)
  assert metrics.pairwise_iou(x, y)[1, 2] == 1.0
  # Sparse masks (pixels empty everywhere are dropped before the product).
  sparse_x = rng.random((4, 32, 32)) < 0.01
  sparse_y = rng.random((2, 32, 32)) < 0.02
  sparse_x[0] = sparse_y[1]
  expected = np.array([[metrics.iou(a, b) for b in sparse_y] for a in sparse_x])
  np.testing.assert_allclose(metrics.pairwise_iou(sparse_x, sparse_y),
                             expected)
  assert metrics.pairwise_iou(sparse_x, sparse_y)[0, 1] == 1.0
  np.testing.assert_allclose(metrics.pairwise_iou(stack(A, B, C), stack(A)),
                             [[1.0], [1 / 3], [0.0]])


def test_ged_hand_case_with_and_without_self_pairs():
  samples, truths = stack(A, B), stack(A, C)
  # Cross distances (0, 1, 2/3, 1) -> mean 2/3. Within samples: with self
  # pairs 2 * (2/3) / 4 = 1/3, without 2/3. Within truths: 1/2 and 1.
  assert metrics.generalized_energy_distance(samples, truths) == (
      pytest.approx(4 / 3 - 1 / 3 - 1 / 2))
  assert metrics.generalized_energy_distance(
      samples, truths, include_self_pairs=False) == pytest.approx(
          4 / 3 - 2 / 3 - 1)


def test_ged_single_ground_truth_and_symmetry():
  # S = {A, B}, Y = {A}: 2 * 1/3 - 1/3 - 0.
  assert metrics.generalized_energy_distance(stack(A, B), stack(A)) == (
      pytest.approx(1 / 3))
  rng = np.random.default_rng(1)
  x = rng.random((4, 6, 6)) < 0.4
  y = rng.random((3, 6, 6)) < 0.4
  for self_pairs in (True, False):
    assert metrics.generalized_energy_distance(x, y, self_pairs) == (
        pytest.approx(metrics.generalized_energy_distance(y, x, self_pairs)))
  assert metrics.generalized_energy_distance(x, x) == pytest.approx(0.0)
  with pytest.raises(ValueError, match='at least 2'):
    metrics.generalized_energy_distance(x, y[:1], include_self_pairs=False)


def test_ged_on_sparse_masks_matches_scalar_iou_loops():
  rng = np.random.default_rng(10)
  samples = rng.random((5, 32, 32)) < 0.01
  truths = rng.random((3, 32, 32)) < 0.01
  truths[2] = False

  def mean_distance(xs, ys):
    return np.mean([1 - metrics.iou(x, y) for x in xs for y in ys])

  expected = (2 * mean_distance(samples, truths)
              - mean_distance(samples, samples) - mean_distance(truths, truths))
  assert metrics.generalized_energy_distance(samples, truths) == (
      pytest.approx(expected))


def test_weighted_ged():
  rng = np.random.default_rng(2)
  modes = rng.random((3, 5, 5)) < 0.5
  probs = np.array([0.5, 0.3, 0.2])
  assert metrics.weighted_generalized_energy_distance(
      modes, probs, modes, probs) == pytest.approx(0.0, abs=1e-12)
  # Uniform weights reproduce the self-pair GED.
  samples = rng.random((4, 5, 5)) < 0.5
  assert metrics.weighted_generalized_energy_distance(
      samples, None, modes, np.full(3, 1 / 3)) == pytest.approx(
          metrics.generalized_energy_distance(samples, modes))
  # Weight 2/3 on A equals the sample set {A, A, B}.
  assert metrics.weighted_generalized_energy_distance(
      stack(A, B), [2 / 3, 1 / 3], modes[:, :1, :4], probs) == pytest.approx(
          metrics.weighted_generalized_energy_distance(
              stack(A, A, B), None, modes[:, :1, :4], probs))
  with pytest.raises(ValueError, match='sum to 1'):
    metrics.weighted_generalized_energy_distance(modes, None, modes,
                                                 [0.5, 0.5, 0.5])


def test_hungarian_matched_iou_hand_cases():
  # Matching A-A and B-C beats A-C and B-A: (1 + 0) / 2.
  assert metrics.hungarian_matched_iou(stack(A, B), stack(A, C)) == 0.5
  # 2 vs 3 -> 6 slots: 3 x A-A, 2 x B-B, 1 x B-A: (5 + 1/3) / 6.
  assert metrics.hungarian_matched_iou(stack(A, B), stack(A, A, B)) == (
      pytest.approx(8 / 9))


def test_hungarian_lcm_duplication_differs_from_plain_matching():
  samples, truths = stack(A, A, A), stack(A, A, A, B)
  # 12 slots: 9 x A-A (IoU 1) and 3 x A-B (IoU 1/3).
  assert metrics.hungarian_matched_iou(samples, truths) == pytest.approx(
      (9 + 3 / 3) / 12)
  # Plain min(N, M) matching would drop B and give 1.
  plain = metrics.pairwise_iou(samples, truths)
  rows, cols = optimize.linear_sum_assignment(plain, maximize=True)
  assert plain[rows, cols].mean() == 1.0


def test_weighted_hungarian_equals_duplication_for_uniform_probs():
  rng = np.random.default_rng(3)
  for n, m in ((3, 4), (5, 2), (4, 4)):
    samples = rng.random((n, 6, 6)) < 0.5
    truths = rng.random((m, 6, 6)) < 0.5
    assert metrics.weighted_hungarian_matched_iou(
        samples, truths, np.full(m, 1 / m)) == pytest.approx(
            metrics.hungarian_matched_iou(samples, truths), abs=1e-9)


def test_weighted_hungarian_hand_case():
  # Samples {A, B} at 1/2; modes A: 3/4, B: 1/4. Optimal coupling A->A 1/2,
  # B->B 1/4, B->A 1/4: 1/2 + 1/4 + 1/4 * 1/3.
  assert metrics.weighted_hungarian_matched_iou(
      stack(A, B), stack(A, B), [0.75, 0.25]) == pytest.approx(5 / 6)
  assert metrics.weighted_hungarian_matched_iou(
      stack(A, B), stack(A, B), [0.75, 0.25],
      sample_weights=[0.75, 0.25]) == pytest.approx(1.0)


def test_multiclass_iou():
  pred = np.array([[1, 1, 2], [0, 0, 2]])
  gt = np.array([[1, 0, 0], [0, 0, 2]])
  # Class 1: 1/2, class 2: 1/2, class 3 absent in both: left out.
  assert instance_metrics.multiclass_iou(pred, gt, [1, 2, 3]) == pytest.approx(0.5)
  # A wrongly predicted absence counts 0.
  gt_with_3 = gt.copy()
  gt_with_3[1, 0] = 3
  assert instance_metrics.multiclass_iou(pred, gt_with_3, [1, 2, 3]) == (
      pytest.approx(1 / 3))
  # Masking out pixel (0, 1) makes class 1 perfect.
  mask = np.ones((2, 3), np.float32)
  mask[0, 1] = 0
  assert instance_metrics.multiclass_iou(pred, gt, [1, 2], mask) == pytest.approx(0.75)
  assert np.isnan(instance_metrics.multiclass_iou(pred, gt, [7]))


def brute_force_rand_scores(pred, gt, singletons, self_pairs):
  """Counts ordered foreground pixel pairs directly (independent reference)."""
  pixels = [(p, g) for p, g in zip(pred.ravel(), gt.ravel()) if g != 0]
  same_pred = same_gt = same_both = 0
  for (i, (p1, g1)), (j, (p2, g2)) in itertools.product(enumerate(pixels),
                                                        repeat=2):
    if i == j and not self_pairs:
      continue
    joined_pred = p1 == p2 and (i == j or not (singletons and p1 == 0))
    same_pred += joined_pred
    same_gt += g1 == g2
    same_both += joined_pred and g1 == g2
  return (1 - 2 * same_both / (same_pred + same_gt), same_both / same_pred,
          same_both / same_gt)


def snemi3d_adapted_rand(seg, gt):
  """The SNEMI3D challenge's `adapted_rand` script, transcribed
  (docs/paper_notes.md#21-rand-error): returns (error, precision, recall)."""
  seg_a, seg_b = np.ravel(gt), np.ravel(seg)
  n = seg_a.size
  n_labels_a, n_labels_b = np.amax(seg_a) + 1, np.amax(seg_b) + 1
  p_ij = sparse.csr_matrix((np.ones(n), (seg_a, seg_b)),
                           shape=(n_labels_a, n_labels_b))
  a = p_ij[1:n_labels_a, :]
  b = p_ij[1:n_labels_a, 1:n_labels_b]
  c = p_ij[1:n_labels_a, 0].todense()
  d = b.multiply(b)
  a_i = np.array(a.sum(1))
  b_i = np.array(b.sum(0))
  sum_a = np.sum(a_i * a_i)
  sum_b = np.sum(b_i * b_i) + (np.sum(c) / n)
  sum_ab = np.sum(d) + (np.sum(c) / n)
  precision = sum_ab / sum_b
  recall = sum_ab / sum_a
  f_score = 2.0 * precision * recall / (precision + recall)
  return 1.0 - f_score, precision, recall


def test_rand_error_hand_cases():
  gt = np.array([1, 1, 2, 2])
  merged = np.array([1, 1, 1, 1])
  # Self pairs: joint 8, pred 16, gt 8 -> 1 - 16 / 24.
  assert instance_metrics.rand_error(merged, gt) == pytest.approx(1 / 3)
  # Without: joint 4, pred 12, gt 4 -> 1 - 8 / 16.
  assert instance_metrics.rand_error(merged, gt, include_self_pairs=False,
                            pred_zero='singletons') == 0.5
  # Pred label 0 inside gt 1 (c = 2 of n = 4 pixels). SNEMI3D: joint
  # 1 + 2/4, pred 1 + 2/4, gt 4 + 1 -> (7/13, 1, 0.3).
  gt = np.array([1, 1, 0, 2])
  pred = np.array([0, 0, 5, 3])
  assert instance_metrics.adapted_rand_scores(pred, gt) == pytest.approx(
      (7 / 13, 1.0, 0.3))
  # As two singletons: joint 3, pred 3, gt 5.
  assert instance_metrics.adapted_rand_scores(pred, gt, pred_zero='singletons') == (
      pytest.approx((0.25, 1.0, 0.6)))
  assert instance_metrics.rand_error(pred, gt, pred_zero='segment') == 0.0
  assert np.isnan(instance_metrics.rand_error(pred, np.zeros(4, int)))


def test_rand_error_default_is_the_snemi3d_script():
  rng = np.random.default_rng(7)
  for num_pred_labels, zero_fraction in ((5, 0.0), (5, 0.3), (40, 0.05)):
    gt = rng.integers(0, 6, size=(32, 32))
    # Labels 1.. only, then some predicted zeros (also inside gt foreground).
    pred = rng.integers(1, num_pred_labels + 1, size=(32, 32))
    pred[rng.random((32, 32)) < zero_fraction] = 0
    assert (np.any(pred[gt != 0] == 0)) == (zero_fraction > 0)
    expected = snemi3d_adapted_rand(pred, gt)
    assert instance_metrics.adapted_rand_scores(pred, gt) == pytest.approx(
        expected, rel=1e-12)
    assert instance_metrics.rand_error(pred, gt) == pytest.approx(expected[0],
                                                         rel=1e-12)
  with pytest.raises(ValueError, match='include_self_pairs'):
    instance_metrics.rand_error(pred, gt, include_self_pairs=False)


def test_rand_error_brute_force_all_conventions():
  rng = np.random.default_rng(4)
  for _ in range(3):
    gt = rng.integers(0, 4, size=(5, 6))
    pred = rng.integers(0, 3, size=(5, 6))
    for pred_zero, self_pairs in itertools.product(('singletons', 'segment'),
                                                   (True, False)):
      # 'snemi3d' differs from 'singletons' in the unassigned pixels' weight
      # only (c / n instead of c), tested against the script above.
      expected = brute_force_rand_scores(pred, gt, pred_zero == 'singletons',
                                         self_pairs)
      assert instance_metrics.adapted_rand_scores(
          pred, gt, pred_zero=pred_zero,
          include_self_pairs=self_pairs) == pytest.approx(expected)


def test_rand_error_matches_skimage():
  for seed in range(5):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 6, size=(32, 32))
    pred = rng.integers(0, 1 + 4 * seed, size=(32, 32))
    error, precision, recall = instance_metrics.adapted_rand_scores(
        pred, gt, pred_zero='segment', include_self_pairs=False)
    sk_error, sk_precision, sk_recall = skimage_metrics.adapted_rand_error(
        gt, pred)
    assert error == pytest.approx(sk_error)
    # skimage names the two the other way round.
    assert recall == pytest.approx(sk_precision)
    assert precision == pytest.approx(sk_recall)


def test_rand_error_perfect_prediction_is_zero():
  rng = np.random.default_rng(5)
  gt = rng.integers(0, 5, size=(16, 16))
  relabelled = np.where(gt == 0, 0, gt + 10)
  assert instance_metrics.rand_error(relabelled, gt) == 0.0
  for pred_zero in ('singletons', 'segment'):
    for self_pairs in (True, False):
      assert instance_metrics.rand_error(relabelled, gt, pred_zero=pred_zero,
                                include_self_pairs=self_pairs) == 0.0


def test_rand_error_rejects_bad_inputs():
  with pytest.raises(ValueError, match='integer'):
    instance_metrics.rand_error(np.zeros(3), np.zeros(3, int))
  with pytest.raises(ValueError, match='pred_zero'):
    instance_metrics.rand_error(np.zeros(3, int), np.ones(3, int), pred_zero='x')


def test_bootstrap_constant_and_shrinking_std():
  mean, std = bootstrap.bootstrap_mean_std(np.full(50, 0.3), rng=0)
  assert mean == pytest.approx(0.3)
  assert std == pytest.approx(0.0, abs=1e-12)
  rng = np.random.default_rng(6)
  few = rng.random(20)
  many = rng.random(2000)
  mean_few, std_few = bootstrap.bootstrap_mean_std(few, 500, rng=rng)
  mean_many, std_many = bootstrap.bootstrap_mean_std(many, 500, rng=rng)
  assert std_many < std_few / 4  # ~ 1 / sqrt(100) = 1 / 10 expected.
  assert mean_few == pytest.approx(few.mean(), abs=3 * std_few)
  assert mean_many == pytest.approx(many.mean(), abs=3 * std_many)


def test_pooled_bootstrap_over_seeds():
  mean, std = bootstrap.pooled_bootstrap(
      [np.zeros(10), np.ones(7)], num_resamples=100, rng=0)
  assert (mean, std) == (pytest.approx(0.5), pytest.approx(0.5))
  with pytest.raises(ValueError, match='non-finite'):
    bootstrap.pooled_bootstrap([np.array([0.1, np.nan])], rng=0)
  with pytest.raises(ValueError, match='num_resamples'):
    bootstrap.bootstrap_mean_std(np.ones(3), 0, rng=0)
