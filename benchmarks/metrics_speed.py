"""Evaluation metrics speed: GED + Hungarian-matched IoU, and clustering.

  python -m benchmarks.metrics_speed [--quick]

* GED^2 (`eval.metrics.generalized_energy_distance`) and the
  Hungarian-matched IoU (`eval.metrics.hungarian_matched_iou`) for an
  LIDC-size test set: 1992 images, 16 samples and 4 graders each, 128x128.
  The masks are small elliptic lesions jittered around one lesion per image,
  about 30% of them empty, as in LIDC. Only the metric calls are timed (the
  masks are generated in chunks between them).
* `eval.clustering.cluster_instances` of one 256x256 image with 16 samples
  of 16 classes (SNEMI3D's 15 instance ids + background, alpha 16): Voronoi
  cells with jittered membranes and random instance ids per sample.
"""
import time

import numpy as np

from benchmarks import common
from eval import clustering
from eval import metrics

NAME = 'metrics_speed'
# Generated and scored per chunk of this many images (bounds memory).
_CHUNK = 100


def lesion_stack(rng: np.random.Generator, num_images: int, num_masks: int,
                 size: int) -> np.ndarray:
  """bool `[num_images, num_masks, size, size]`: per image, masks jittered
  around one lesion (centre +- 1.5 px, radius x0.7-1.3), ~30% empty."""
  rows = np.arange(size)[None, None, :, None]
  cols = np.arange(size)[None, None, None, :]
  shape = (num_images, num_masks, 1, 1)
  centre_r = size / 2 + rng.normal(0, size / 16, (num_images, 1, 1, 1))
  centre_c = size / 2 + rng.normal(0, size / 16, (num_images, 1, 1, 1))
  radius = rng.uniform(2.0, 12.0, (num_images, 1, 1, 1))
  centre_r = centre_r + rng.normal(0, 1.5, shape)
  centre_c = centre_c + rng.normal(0, 1.5, shape)
  radius_r = radius * rng.uniform(0.7, 1.3, shape)
  radius_c = radius * rng.uniform(0.7, 1.3, shape)
  inside = (((rows - centre_r) / radius_r)**2 +
            ((cols - centre_c) / radius_c)**2) <= 1.0
  return inside & (rng.uniform(size=shape) >= 0.3)


def instance_samples(rng: np.random.Generator, num_samples: int, size: int,
                     num_cells: int, num_ids: int) -> np.ndarray:
  """int32 `[num_samples, size, size]`: Voronoi cells (seeds jittered by
  ~1.5 px per sample), 0 on ~2 px membranes, ids drawn from [1, num_ids]."""
  seeds = rng.uniform(0, size, (num_cells, 2))
  grid = np.stack(np.meshgrid(np.arange(size), np.arange(size),
                              indexing='ij'), -1).reshape(-1, 1, 2)
  samples = []
  for _ in range(num_samples):
    jittered = seeds + rng.normal(0, 1.5, seeds.shape)
    distance = np.linalg.norm(grid - jittered[None], axis=-1)
    nearest_two = np.partition(distance, 1, axis=1)[:, :2]
    cell = np.argmin(distance, axis=1)
    ids = rng.integers(1, num_ids + 1, num_cells)
    labels = np.where(nearest_two[:, 1] - nearest_two[:, 0] < 2.0, 0,
                      ids[cell])
    samples.append(labels.reshape(size, size))
  return np.stack(samples).astype(np.int32)


def time_lesion_metrics(num_images: int, num_samples: int, num_graders: int,
                        size: int, seed: int = 0) -> dict:
  """Total seconds of GED and HM-IoU over `num_images` generated images."""
  rng = np.random.default_rng(seed)
  ged_s = hm_iou_s = 0.0
  ged_values, hm_iou_values = [], []
  for start in range(0, num_images, _CHUNK):
    count = min(_CHUNK, num_images - start)
    masks = lesion_stack(rng, count, num_samples + num_graders, size)
    for image_masks in masks:
      samples, graders = image_masks[:num_samples], image_masks[num_samples:]
      begin = time.perf_counter()
      ged_values.append(metrics.generalized_energy_distance(samples,
                                                            graders))
      middle = time.perf_counter()
      hm_iou_values.append(metrics.hungarian_matched_iou(samples, graders))
      ged_s += middle - begin
      hm_iou_s += time.perf_counter() - middle
  return {'ged_s': ged_s, 'hm_iou_s': hm_iou_s, 'total_s': ged_s + hm_iou_s,
          'mean_ged': float(np.mean(ged_values)),
          'mean_hm_iou': float(np.mean(hm_iou_values))}


def main():
  args = common.parse_args(__doc__.splitlines()[0])
  machine = common.machine_info()
  num_images = 100 if args.quick else 1992
  num_runs = 2 if args.quick else 5
  cluster_size = 64 if args.quick else 256
  num_samples, num_graders, size = 16, 4, 128

  lesions = time_lesion_metrics(num_images, num_samples, num_graders, size)
  samples = instance_samples(np.random.default_rng(0), num_samples,
                             cluster_size, num_cells=max(4, cluster_size // 4),
                             num_ids=15)
  cluster_timing = common.time_calls(
      lambda: clustering.cluster_instances(samples, num_classes=16, alpha=16,
                                           rng=0), num_runs=num_runs)
  num_instances = len(np.unique(clustering.cluster_instances(
      samples, num_classes=16, alpha=16, rng=0))) - 1

  common.print_table(
      f'Metrics, {machine["cpu_model"]}, {machine["usable_cores"]} cores, '
      f'load {machine["load_average_1_5_15"]}',
      ['measurement', 'seconds', 'per image ms'],
      [[f'GED^2, {num_images} images x {num_samples} samples x '
        f'{num_graders} graders, {size}x{size}', lesions['ged_s'],
        1e3 * lesions['ged_s'] / num_images],
       ['Hungarian-matched IoU, same set', lesions['hm_iou_s'],
        1e3 * lesions['hm_iou_s'] / num_images],
       ['GED^2 + HM-IoU', lesions['total_s'],
        1e3 * lesions['total_s'] / num_images],
       [f'cluster_instances {cluster_size}x{cluster_size} x {num_samples} '
        f'samples (median of {num_runs})', cluster_timing.median_s,
        1e3 * cluster_timing.median_s]])
  common.write_results(NAME, {
      'lesion_metrics': dict(lesions, num_images=num_images,
                             num_samples=num_samples,
                             num_graders=num_graders, image_size=size),
      'cluster_instances': dict(cluster_timing.as_dict(),
                                image_size=cluster_size,
                                num_samples=num_samples, num_classes=16,
                                alpha=16, num_instances_found=num_instances),
  }, machine, args.out)


if __name__ == '__main__':
  main()
