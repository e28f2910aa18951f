"""Tests for eval.clustering (paper Appx. G and H)."""
import numpy as np
import pytest
from scipy import ndimage

from eval import clustering


def naive_hamming_cluster(samples, num_classes, alpha, background, rng):
  """Algorithm 1 literally, on one-hot vectors of length n * C."""
  n, height, width = samples.shape
  one_hot = np.eye(num_classes, dtype=int)[samples]  # [n, H, W, C]
  vectors = one_hot.transpose(1, 2, 0, 3).reshape(height * width, -1)
  labels = samples.reshape(n, -1).T
  clusters = np.full(height * width, -1)
  unassigned = list(range(height * width))
  prototype = np.tile(np.eye(num_classes, dtype=int)[background], n)
  cluster_id = 0
  while unassigned:
    if cluster_id > 0:
      # The documented draw order: label vector, then pixel index.
      ordered = sorted(unassigned, key=lambda i: (tuple(labels[i]), i))
      pixel = ordered[rng.integers(len(ordered))]
      prototype = vectors[pixel]
      clusters[pixel] = cluster_id
      unassigned.remove(pixel)
    for pixel in list(unassigned):
      if np.sum(vectors[pixel] != prototype) <= alpha:
        clusters[pixel] = cluster_id
        unassigned.remove(pixel)
    cluster_id += 1
  return clusters.reshape(height, width)


def planted_samples(rng, num_samples=16, noisy_per_pixel=3, size=32):
  """Four rectangles whose labels vary together across samples, plus noise.

  Object k has class 1 + (k + s) % 5 in sample s, so two objects differ in
  every sample and no object pixel is ever background. Every pixel then gets
  up to `noisy_per_pixel` samples relabelled at random: pixels of one object
  stay within Hamming distance 2 * 2 * 3 = 12, different objects (and objects
  vs background) at least 2 * (16 - 6) = 20 apart; alpha = 16 separates them.
  """
  instances = np.zeros((size, size), int)
  instances[2:12, 2:14] = 1
  instances[2:12, 18:30] = 2
  instances[16:30, 2:10] = 3
  instances[16:30, 14:30] = 4
  sample_index = np.arange(num_samples)[:, None, None]
  samples = np.where(instances > 0, 1 + (instances + sample_index) % 5, 0)
  for _ in range(noisy_per_pixel):
    which = rng.integers(num_samples, size=(size, size))
    noise = rng.integers(6, size=(size, size))
    np.put_along_axis(samples, which[None], noise[None], axis=0)
  return samples, instances


def assert_same_partition(clusters, instances):
  """Clusters equal instances up to renaming, with background mapped to 0."""
  np.testing.assert_array_equal(clusters[instances == 0], 0)
  for instance in np.unique(instances):
    assert np.unique(clusters[instances == instance]).size == 1
  pairs = np.unique(np.stack([instances.ravel(), clusters.ravel()]), axis=1)
  assert pairs.shape[1] == np.unique(instances).size


def test_pixel_label_vectors_groups_identical_pixels():
  samples = np.array([[[1, 0], [1, 2]], [[0, 0], [0, 1]]])
  vectors, group_of_pixel, sizes = clustering.pixel_label_vectors(samples)
  np.testing.assert_array_equal(vectors, [[0, 0], [1, 0], [2, 1]])
  np.testing.assert_array_equal(group_of_pixel, [1, 0, 1, 2])
  np.testing.assert_array_equal(sizes, [1, 2, 1])


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_hamming_cluster_recovers_planted_instances(seed):
  rng = np.random.default_rng(seed)
  samples, instances = planted_samples(rng)
  clusters = clustering.hamming_cluster(samples, 6, alpha=16, rng=seed)
  assert clusters.dtype == np.int32
  assert_same_partition(clusters, instances)


@pytest.mark.parametrize('alpha', [0, 2, 3, 4, 6])
def test_hamming_cluster_matches_naive_reference(alpha):
  for seed in range(3):
    data_rng = np.random.default_rng(100 + seed)
    # Coarse random blocks so that many pixels share label vectors.
    blocks = data_rng.integers(0, 3, size=(4, 3, 4))
    samples = np.kron(blocks, np.ones((1, 2, 2), int))
    noise = data_rng.random(samples.shape) < 0.1
    samples = np.where(noise, data_rng.integers(0, 3, samples.shape), samples)
    expected = naive_hamming_cluster(samples, 3, alpha, 0,
                                     np.random.default_rng(seed))
    actual = clustering.hamming_cluster(samples, 3, alpha, background=0,
                                        rng=np.random.default_rng(seed))
    np.testing.assert_array_equal(actual, expected)


def test_hamming_cluster_background_class_and_validation():
  samples = np.full((4, 3, 3), 2)
  samples[:, 0, 0] = 1
  clusters = clustering.hamming_cluster(samples, 3, alpha=0, background=2,
                                        rng=0)
  expected = np.zeros((3, 3), np.int32)
  expected[0, 0] = 1
  np.testing.assert_array_equal(clusters, expected)
  with pytest.raises(ValueError, match='labels must lie'):
    clustering.hamming_cluster(samples, 2, alpha=0, rng=0)
  with pytest.raises(ValueError, match=r'\[n, H, W\]'):
    clustering.hamming_cluster(samples[0], 3, alpha=0, rng=0)


def test_small_cluster_ids_equals_per_cluster_binary_erosion():
  rng = np.random.default_rng(7)
  clusters = np.kron(rng.integers(0, 6, size=(6, 6)), np.ones((4, 4), int))
  clusters[rng.random(clusters.shape) < 0.05] = 7
  expected = [
      cluster_id for cluster_id in range(1, 8)
      if np.any(clusters == cluster_id) and not ndimage.binary_erosion(
          clusters == cluster_id, np.ones((5, 5)), border_value=1).any()]
  np.testing.assert_array_equal(
      clustering.small_cluster_ids(clusters, 5), expected)
  # A 3-row strip along the image border survives (border counts as inside).
  strip = np.zeros((12, 12), int)
  strip[:3] = 1
  assert clustering.small_cluster_ids(strip, 5).size == 0


def two_regions():
  """Cluster 1 on the left, cluster 2 on the right, background between."""
  clusters = np.zeros((12, 16), int)
  clusters[:, :7] = 1
  clusters[:, 9:] = 2
  return clusters


def test_remove_small_clusters_repaints_with_majority_neighbour():
  clusters = two_regions()
  clusters[5, 6] = 3  # Its 5 x 5 box: fourteen 1s, one 4, no 2.
  clusters[5, 8] = 4  # Box (cols 6-10): five 1s, ten 2s.
  result = clustering.remove_small_clusters(clusters, erosion_size=5,
                                            box_size=5)
  expected = two_regions()
  expected[5, 8] = 2
  np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize('rule, expected_label', [('keep', 3),
                                                  ('background', 0)])
def test_remove_small_clusters_without_neighbours(rule, expected_label):
  clusters = np.zeros((20, 20), int)
  clusters[:6, :6] = 1
  clusters[14:16, 14:16] = 3
  result = clustering.remove_small_clusters(clusters, erosion_size=5,
                                            box_size=11, no_neighbour=rule)
  expected = clusters.copy()
  expected[14:16, 14:16] = expected_label
  np.testing.assert_array_equal(result, expected)


def test_background_rule_when_the_map_has_no_background_pixel():
  clusters = np.ones((10, 10), int)
  clusters[4:6, 4:6] = 3
  # A 1 x 1 box never holds a valid neighbour.
  result = clustering.remove_small_clusters(clusters, box_size=1,
                                            no_neighbour='background')
  expected = clusters.copy()
  expected[4:6, 4:6] = 0
  np.testing.assert_array_equal(result, expected)


def test_remove_small_clusters_paints_on_the_fly_in_row_major_order():
  clusters = np.zeros((5, 12), int)
  clusters[:, :3] = 1
  clusters[:, 8:] = 2
  clusters[1, 3:6] = 3
  # With a 3 x 3 box only (1, 3) touches cluster 1; (1, 4) and (1, 5) see
  # nothing but the freshly painted pixel to their left.
  result = clustering.remove_small_clusters(clusters, erosion_size=3,
                                            box_size=3, no_neighbour='keep')
  expected = clusters.copy()
  expected[1, 3:6] = 1
  np.testing.assert_array_equal(result, expected)


def test_background_rule_removes_every_small_cluster():
  rng = np.random.default_rng(8)
  clusters = np.kron(rng.integers(0, 5, size=(5, 5)), np.ones((6, 6), int))
  speckle = rng.random(clusters.shape) < 0.1
  clusters[speckle] = rng.integers(5, 40, size=speckle.sum())
  small = clustering.small_cluster_ids(clusters, 5)
  result = clustering.remove_small_clusters(clusters,
                                            no_neighbour='background')
  assert not np.isin(result, small).any()


def test_remove_small_clusters_validation():
  with pytest.raises(ValueError, match='odd'):
    clustering.remove_small_clusters(two_regions(), erosion_size=4)
  with pytest.raises(ValueError, match='no_neighbour'):
    clustering.remove_small_clusters(two_regions(), no_neighbour='drop')


def test_cluster_instances_removes_speckle():
  rng = np.random.default_rng(9)
  samples, instances = planted_samples(rng, noisy_per_pixel=2)
  # Scramble a few object-interior pixels into unique label vectors.
  for row, col in ((6, 8), (22, 6), (24, 20)):
    samples[:, row, col] = rng.integers(6, size=16)
  clusters = clustering.hamming_cluster(samples, 6, alpha=16, rng=0)
  assert np.unique(clusters).size > 5  # The speckle forms its own clusters.
  result = clustering.cluster_instances(samples, 6, alpha=16, rng=0)
  assert_same_partition(result, instances)


def test_threshold_follows_the_number_of_clustered_samples():
  # The paper's alpha = n (16 for 16 samples, 32 for 32); fewer samples
  # lower a configured alpha to n, more keep it.
  assert clustering.threshold_for_samples(16, 16) == 16
  assert clustering.threshold_for_samples(32, 32) == 32
  assert clustering.threshold_for_samples(16, 4) == 4
  assert clustering.threshold_for_samples(16, 32) == 16
  with pytest.raises(ValueError, match='>= 1 samples, got 0'):
    clustering.threshold_for_samples(16, 0)
  with pytest.raises(ValueError, match='alpha must be >= 0'):
    clustering.threshold_for_samples(-1, 4)


def test_alpha_that_makes_everything_background_is_refused():
  samples, instances = planted_samples(np.random.default_rng(0),
                                       num_samples=4, noisy_per_pixel=0)
  with pytest.raises(ValueError, match=r'alpha = 8 with 4 samples puts every '
                     r'pixel into the background cluster'):
    clustering.hamming_cluster(samples, 6, alpha=8, rng=0)
  assert_same_partition(
      clustering.hamming_cluster(samples, 6, alpha=7, rng=0), instances)


@pytest.mark.parametrize('num_samples', [1, 4, 8])
def test_cluster_instances_with_fewer_samples_than_alpha(num_samples):
  # alpha = 16 configured for 16 samples: with 8 or fewer, every pixel would
  # lie within 16 of the background prototype (one cluster, Rand error 1).
  samples, instances = planted_samples(
      np.random.default_rng(0), num_samples=num_samples, noisy_per_pixel=0)
  result = clustering.cluster_instances(samples, 6, alpha=16, rng=0)
  assert_same_partition(result, instances)


def test_evaluator_clusters_with_the_threshold_of_its_sample_count():
  # One rule for run_metrics, the trainer's evaluation and the study.
  from eval import evaluator  # pylint: disable=g-import-not-at-top
  from eval import task_scores  # pylint: disable=g-import-not-at-top
  threshold = evaluator.clustering_threshold
  assert threshold('synthetic_cells', 16, 4) == 4
  assert threshold('snemi3d', 16, 100) == 16  # 16 of them are clustered.
  assert threshold('cityscapes_cars', 32, 32) == 32
  assert threshold('cityscapes_cars', 32, 8) == 8
  assert threshold('synthetic_lesions', 16, 4) is None
  # score_instances with 4 consistent samples and the config's alpha = 16.
  instances = np.zeros((16, 16), np.int32)
  instances[:, :7], instances[:, 9:] = 1, 2
  samples = np.stack([np.where(instances == 1, 1 + s % 3,
                               np.where(instances == 2, 4, 0))
                      for s in range(4)])
  values, _, arrays = task_scores.score_instances(
      {'image': np.zeros((16, 16, 1), np.float32), 'instances': instances},
      samples, lambda image, seg: np.asarray(seg), np.random.default_rng(0),
      num_instance_ids=4, cluster_alpha=16, cluster_no_neighbour='keep')
  assert values['rand_error'] == 0.0
  assert len(np.unique(arrays['clusters'])) == 3
