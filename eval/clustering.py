"""Instance clustering from segmentation samples (paper Appx. G and H).

`hamming_cluster` is the greedy Hamming-distance clustering of Algorithm 1,
`remove_small_clusters` the post-processing of Appx. H, and
`cluster_instances` runs both, as the evaluator does, with the threshold of
`threshold_for_samples`.

Each pixel is described by its n sampled class labels. The Hamming distance
between the concatenated one-hot vectors (length n * C) of two pixels is
2 x (number of samples in which their labels differ), since every differing
sample flips two entries. Pixels with identical label vectors are always
assigned together, so the clustering works on the unique label vectors
(`np.unique`-style grouping) and only ever compares those.
"""

import numpy as np
from scipy import ndimage


def _check_samples(samples, num_classes, background):
  samples = np.asarray(samples)
  if samples.ndim != 3 or samples.shape[0] == 0:
    raise ValueError(f'samples must be int class labels [n, H, W] with n >= 1, '
                     f'got shape {samples.shape}.')
  if not np.issubdtype(samples.dtype, np.integer):
    raise ValueError(f'samples must hold integer class labels, got dtype '
                     f'{samples.dtype}.')
  if samples.size and (samples.min() < 0 or samples.max() >= num_classes):
    raise ValueError(f'samples labels must lie in [0, {num_classes}), got '
                     f'range [{samples.min()}, {samples.max()}].')
  if not 0 <= background < num_classes:
    raise ValueError(f'background class {background} is not in '
                     f'[0, {num_classes}).')
  return samples


def pixel_label_vectors(samples):
  """Groups pixels by their label vectors in lexicographic order.

  Args:
    samples: int `[n, H, W]`.

  Returns:
    unique_vectors: `[G, n]` the distinct per-pixel label vectors, sorted
      lexicographically (sample 0 most significant).
    group_of_pixel: int64 `[H * W]` index into `unique_vectors` per pixel
      (row-major pixel order).
    group_sizes: int64 `[G]` number of pixels per group.
  """
  n = samples.shape[0]
  vectors = samples.reshape(n, -1).T  # [H * W, n]
  # np.lexsort sorts by the last key first: reverse so sample 0 leads.
  order = np.lexsort(vectors.T[::-1])
  sorted_vectors = vectors[order]
  is_new = np.ones(len(order), bool)
  is_new[1:] = np.any(sorted_vectors[1:] != sorted_vectors[:-1], axis=1)
  group_of_sorted = np.cumsum(is_new) - 1
  group_of_pixel = np.empty(len(order), np.int64)
  group_of_pixel[order] = group_of_sorted
  group_sizes = np.bincount(group_of_sorted)
  return sorted_vectors[is_new], group_of_pixel, group_sizes


def threshold_for_samples(alpha, num_samples):
  """The Hamming threshold used to cluster `num_samples` samples.

  The paper sets alpha to the number of clustered samples (alpha = 16 for
  n = 16 on SNEMI3D, 32 for n = 32 on Cityscapes, Appx. C;
  docs/paper_notes.md#23-instance-clustering): a pixel joins a prototype
  when at most half of its samples differ. A configured `alpha` is the
  threshold for that many samples; with fewer samples it is lowered to n,
  because with alpha >= 2n every pixel lies within alpha of the background
  prototype and the whole image becomes one background cluster (and above
  n, more than half of the samples may differ).

  Args:
    alpha: the configured threshold (`config.eval.cluster_alpha`), >= 0.
    num_samples: n, the samples clustered (>= 1).

  Returns:
    `min(alpha, n)`.
  """
  if int(num_samples) != num_samples or num_samples < 1:
    raise ValueError(f'the clustering needs >= 1 samples, got {num_samples}.')
  if alpha < 0:
    raise ValueError(f'alpha must be >= 0, got {alpha}.')
  return min(int(alpha), int(num_samples))


def hamming_cluster(samples, num_classes, alpha, background=0, rng=None):
  """Greedy Hamming-distance clustering (paper Algorithm 1).

  Cluster 0 takes every pixel within Hamming distance `alpha` of the
  background prototype (label `background` in every sample). Then, while
  pixels are unassigned, a uniformly random unassigned pixel becomes the next
  cluster's prototype, and every unassigned pixel within distance `alpha` of
  it joins that cluster (the prototype itself always does).

  Random draw, shared with the naive reference in the tests: each prototype is
  `U[rng.integers(len(U))]`, where U lists the unassigned pixels sorted by
  (label vector lexicographically, then row-major pixel index). The draw is
  uniform over unassigned pixels; the order only fixes which pixel an integer
  names.

  Args:
    samples: int `[n, H, W]` class labels (argmax of each sample).
    num_classes: number of classes C (labels lie in [0, C)).
    alpha: Hamming threshold on the length n * C one-hot vectors (the paper
      uses 16 for n = 16, 32 for n = 32, i.e. up to alpha / 2 samples may
      differ); below 2n, since at 2n or more every pixel joins the
      background cluster (`threshold_for_samples` gives the paper's).
    background: the background class label.
    rng: `np.random.Generator`, int seed, or None (fresh OS entropy, not
      reproducible).

  Returns:
    int32 `[H, W]` cluster ids; 0 is the background cluster (it may be empty),
    1, 2, ... the others in the order they were created.
  """
  samples = _check_samples(samples, num_classes, background)
  n, height, width = samples.shape
  if alpha < 0:
    raise ValueError(f'alpha must be >= 0, got {alpha}.')
  if alpha >= 2 * n:
    raise ValueError(
        f'alpha = {alpha} with {n} samples puts every pixel into the '
        f'background cluster (at most {n} samples can differ, alpha allows '
        f'{int(alpha) // 2}); use alpha < {2 * n}, e.g. '
        f'threshold_for_samples(alpha, {n}) = {min(int(alpha), n)}.')
  rng = np.random.default_rng(rng)
  # 2 * differing samples <= alpha  <=>  differing samples <= floor(alpha / 2).
  max_differing = int(np.floor(alpha / 2))
  vectors, group_of_pixel, group_sizes = pixel_label_vectors(samples)
  label_dtype = np.uint8 if num_classes <= 256 else np.int32
  count_dtype = np.uint8 if n < 256 else np.int32

  cluster_of_group = np.empty(len(vectors), np.int32)
  # Working set, in the lexicographic group order that the draw enumerates:
  # label vectors [n, G'] (one row per sample: fast column-free compares),
  # their group indices, and pixel counts that are zeroed once assigned.
  # Assigned groups are dropped lazily, once they are half the working set.
  working_vectors = np.ascontiguousarray(vectors.T.astype(label_dtype))
  working_groups = np.arange(len(vectors))
  unassigned_sizes = group_sizes.astype(np.int64)
  num_unassigned = len(vectors)
  prototype = np.full(n, background, label_dtype)
  cluster_id = 0
  while num_unassigned:
    if cluster_id > 0:
      cumulative = np.cumsum(unassigned_sizes)
      draw = rng.integers(int(cumulative[-1]))
      chosen = np.searchsorted(cumulative, draw, side='right')
      prototype = working_vectors[:, chosen]
    differing = (working_vectors != prototype[:, None]).sum(
        axis=0, dtype=count_dtype)
    joins = (differing <= max_differing) & (unassigned_sizes > 0)
    cluster_of_group[working_groups[joins]] = cluster_id
    unassigned_sizes[joins] = 0
    num_unassigned -= int(np.count_nonzero(joins))
    if num_unassigned < working_groups.size // 2:
      keep = unassigned_sizes > 0
      working_vectors = working_vectors[:, keep]
      working_groups = working_groups[keep]
      unassigned_sizes = unassigned_sizes[keep]
    cluster_id += 1
  return cluster_of_group[group_of_pixel].reshape(height, width)


def _check_cluster_map(clusters):
  clusters = np.asarray(clusters)
  if (clusters.ndim != 2 or clusters.size == 0
      or not np.issubdtype(clusters.dtype, np.integer)):
    raise ValueError(f'clusters must be a non-empty int [H, W] id map, got '
                     f'dtype {clusters.dtype} shape {clusters.shape}.')
  info = np.iinfo(np.int32)
  if clusters.min() < info.min or clusters.max() > info.max:
    raise ValueError(f'cluster ids must fit in int32, got range '
                     f'[{clusters.min()}, {clusters.max()}].')
  return clusters


def _check_odd_size(name, size):
  if int(size) != size or size < 1 or size % 2 == 0:
    raise ValueError(f'{name} must be a positive odd integer, got {size}.')


def small_cluster_ids(clusters, erosion_size, background=0):
  """Ids of the clusters that an erosion_size x erosion_size erosion removes.

  A cluster survives if some pixel has its whole square window (clipped to
  the image) inside the cluster: `scipy.ndimage.binary_erosion` with a square
  structuring element and `border_value=1`, i.e. outside the image counts as
  part of the cluster, so an object cut by the image border is judged by its
  visible extent. Computed for all clusters at once as min filter == max
  filter of the id map (out-of-image values never win either filter).

  Args:
    clusters: int `[H, W]` cluster ids.
    erosion_size: odd side length of the square structuring element.
    background: the background cluster id, never reported.

  Returns:
    Sorted int array of the ids of clusters that do not survive.
  """
  clusters = _check_cluster_map(clusters)
  _check_odd_size('erosion_size', erosion_size)
  # Out-of-image cells take the map's max (min) so they never lower the
  # window min (raise the window max).
  window_min = ndimage.minimum_filter(clusters, size=erosion_size,
                                      mode='constant', cval=clusters.max())
  window_max = ndimage.maximum_filter(clusters, size=erosion_size,
                                      mode='constant', cval=clusters.min())
  survivors = np.unique(clusters[window_min == window_max])
  all_ids = np.unique(clusters)
  small = np.setdiff1d(all_ids, survivors)
  return small[small != background]


def remove_small_clusters(clusters, erosion_size=5, box_size=11, background=0,
                          no_neighbour='keep'):
  """Repaints clusters that do not survive an erosion (paper Appx. H).

  Each non-background cluster removed by an `erosion_size` square erosion
  (see `small_cluster_ids` for the border convention) is repainted pixel by
  pixel with the majority id of the `box_size` x `box_size` box centred at the
  pixel (clipped at the image border), ignoring the cluster's own id and the
  background id; ties go to the smallest id. With no valid neighbour, the
  pixel keeps its id (`no_neighbour='keep'`, SNEMI3D) or becomes background
  (`'background'`, Cityscapes).

  Painting is on the fly: small clusters (decided once, on the input map) are
  processed in ascending id order, each cluster's pixels in row-major order,
  and every box is read from the current map, so it sees ids already repainted
  (including earlier pixels of the same cluster) and the ids of small clusters
  not yet processed. A cluster's pixels are those holding its id when its
  turn comes, i.e. also pixels painted with it earlier, so no fragment of a
  removed cluster is left behind. The background cluster is never repainted.

  Args:
    clusters: int `[H, W]` cluster ids.
    erosion_size: odd side of the erosion's square structuring element (n).
    box_size: odd side of the majority box (m).
    background: the background cluster id.
    no_neighbour: 'keep' or 'background', see above.

  Returns:
    int32 `[H, W]` repainted cluster ids (ids may have gaps).
  """
  clusters = _check_cluster_map(clusters)
  _check_odd_size('box_size', box_size)
  if no_neighbour not in ('keep', 'background'):
    raise ValueError(f"no_neighbour must be 'keep' or 'background', got "
                     f'{no_neighbour!r}.')
  height, width = clusters.shape
  half = box_size // 2
  small_ids = small_cluster_ids(clusters, erosion_size, background)
  if small_ids.size == 0:
    return clusters.astype(np.int32)
  # Work on dense ids 0..K-1 (same order), so a box's majority is a bincount;
  # argmax then breaks ties towards the smallest id.
  ids = np.union1d(clusters.ravel(), [background])
  result = np.searchsorted(ids, clusters).astype(np.int64)
  num_ids = ids.size
  small_dense = np.searchsorted(ids, small_ids)
  background_dense = int(np.searchsorted(ids, background))
  # Pixels of each small cluster in row-major order, grouped by id.
  flat = result.ravel()
  small_pixels = np.flatnonzero(np.isin(flat, small_dense))
  small_pixels = small_pixels[np.argsort(flat[small_pixels], kind='stable')]
  starts = np.searchsorted(flat[small_pixels], small_dense)
  pixels_of_id = np.split(small_pixels, starts[1:])
  # Pixels painted with a small id that is still to be processed.
  painted_with = {int(small_id): [] for small_id in small_dense}
  for small_id, original_pixels in zip(small_dense.tolist(), pixels_of_id):
    pixels = np.sort(np.concatenate(
        [original_pixels, np.asarray(painted_with.pop(small_id), np.int64)]))
    for pixel in pixels.tolist():
      row, col = divmod(pixel, width)
      box = result[max(row - half, 0):min(row + half + 1, height),
                   max(col - half, 0):min(col + half + 1, width)]
      counts = np.bincount(box.ravel(), minlength=num_ids)
      counts[small_id] = 0
      counts[background_dense] = 0
      new_id = int(counts.argmax())
      if counts[new_id] == 0:  # No valid neighbour.
        if no_neighbour == 'keep':
          continue
        new_id = background_dense
      result[row, col] = new_id
      if new_id in painted_with:
        painted_with[new_id].append(pixel)
  return ids[result].astype(np.int32)


def cluster_instances(samples, num_classes, alpha, background=0,
                      erosion_size=5, box_size=11, no_neighbour='keep',
                      rng=None):
  """Instance map from samples: `hamming_cluster` + `remove_small_clusters`.

  Args:
    samples: int `[n, H, W]` class labels (argmax of each sample).
    num_classes: number of classes C.
    alpha: the configured Hamming threshold; the clustering uses
      `threshold_for_samples(alpha, n)`, i.e. at most n.
    background: the background class label; its cluster gets id 0.
    erosion_size: odd erosion size n of Appx. H (paper: 5).
    box_size: odd majority box size m of Appx. H (paper: 11).
    no_neighbour: 'keep' (SNEMI3D) or 'background' (Cityscapes).
    rng: `np.random.Generator`, int seed, or None (not reproducible).

  Returns:
    int32 `[H, W]` instance ids, 0 = background.
  """
  samples = _check_samples(samples, num_classes, background)
  clusters = hamming_cluster(samples, num_classes,
                             threshold_for_samples(alpha, len(samples)),
                             background=background, rng=rng)
  return remove_small_clusters(clusters, erosion_size=erosion_size,
                               box_size=box_size, background=0,
                               no_neighbour=no_neighbour)
