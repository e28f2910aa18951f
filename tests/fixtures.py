"""Tiny raw data sets in the real on-disk layouts, for the TFDS builder tests.

Each `write_*` function writes one raw data set under `root` exactly as the real
release is laid out, and returns what it wrote so tests can compare the built
examples against it. These functions are the source of truth for the
`datasets/*/dummy_data/` folders: `python -m tests.fixtures` rewrites them.
"""
import pathlib

import numpy as np
import tensorflow_datasets as tfds
import tifffile

from datasets import image_codec

# --- LIDC crops ---------------------------------------------------------------

LIDC_SIZE = 180  # The builder only accepts the release's 180x180 crops.

# split dir -> patient -> [(stem, first grader id, which graders draw a lesion)]
LIDC_LAYOUT = {
    'train': {
        'LIDC-IDRI-0001': [('z-105.0_c0', 0, (True, True, True, True)),
                           ('z-105.0_c1', 0, (True, False, True, False))],
        'LIDC-IDRI-0002': [('z--12.5_c0', 1, (True, True, True, True))],
    },
    'val': {
        'LIDC-IDRI-0003': [('z-40.0_c0', 1, (False, False, False, False))],
    },
    'test': {
        'LIDC-IDRI-0004': [('z-7.0_c0', 1, (True, True, True, True)),
                           ('z-7.0_c1', 0, (False, True, False, False))],
    },
}


def write_lidc(root) -> dict[str, dict[str, dict[str, np.ndarray]]]:
  """Writes `<split>/{images,gt}/<patient>/...png` as in the HPU-Net release.

  Args:
    root: directory to write into (the builder's `manual_dir`).

  Returns:
    {split dir: {key `<patient>/<stem>`: {'image': uint8 [180, 180],
    'graders': uint8 [4, 180, 180] 0/1}}}.
  """
  root = pathlib.Path(root)
  rng = np.random.default_rng(0)
  written = {}
  for split, patients in LIDC_LAYOUT.items():
    written[split] = {}
    for patient, crops in patients.items():
      image_dir = root / split / 'images' / patient
      gt_dir = root / split / 'gt' / patient
      image_dir.mkdir(parents=True)
      gt_dir.mkdir(parents=True)
      for stem, first_grader, lesion_by_grader in crops:
        # A smooth ramp with a little noise: distinct per crop, small as PNG.
        ramp = np.add.outer(np.arange(LIDC_SIZE), np.arange(LIDC_SIZE)) // 2
        image = (ramp + rng.integers(0, 4, ramp.shape)).astype(np.uint8)
        (image_dir / f'{stem}.png').write_bytes(image_codec.encode_png(image))
        graders = np.zeros((4, LIDC_SIZE, LIDC_SIZE), np.uint8)
        for g, has_lesion in enumerate(lesion_by_grader):
          if has_lesion:  # Graders disagree on the lesion's extent.
            graders[g, 80:100 + 5 * g, 70:95] = 1
          (gt_dir / f'{stem}_l{first_grader + g}.png').write_bytes(
              image_codec.encode_png(graders[g] * 255))
        written[split][f'{patient}/{stem}'] = {
            'image': image, 'graders': graders}
  return written


# --- LIDC v1 (128x128 pickle / PHiSeg HDF5) -------------------------------------

LIDC_V1_SIZE = 128
# series uid -> per slice, which of the 4 graders draw a lesion.
LIDC_V1_LAYOUT = {
    '1.3.6.1.4.1.14519.5.2.1.6279.6001.101': [(True, True, True, True),
                                              (True, False, True, False)],
    '1.3.6.1.4.1.14519.5.2.1.6279.6001.102': [(True, True, True, True),
                                              (False, False, True, False)],
    '1.3.6.1.4.1.14519.5.2.1.6279.6001.103': [(False, False, False, False)],
    '1.3.6.1.4.1.14519.5.2.1.6279.6001.104': [(False, True, False, False),
                                              (True, True, True, True)],
    '1.3.6.1.4.1.14519.5.2.1.6279.6001.105': [(True, True, False, True)],
}
# PHiSeg's HDF5 groups: series (by position in LIDC_V1_LAYOUT) per group.
LIDC_V1_HDF5_GROUPS = {'train': (0, 1, 2), 'val': (3,), 'test': (4,)}


def lidc_v1_slices() -> dict[str, dict]:
  """{pickle key: {'image': float32 [128, 128] in [0, 1], 'masks': 4 uint8
  [128, 128] in {0, 1}, 'series_uid': str}}, as in the release's pickle."""
  rng = np.random.default_rng(3)
  slices = {}
  for s, (uid, lesions) in enumerate(LIDC_V1_LAYOUT.items()):
    for z, lesion_by_grader in enumerate(lesions):
      ramp = np.add.outer(np.arange(LIDC_V1_SIZE), np.arange(LIDC_V1_SIZE))
      image = (ramp / ramp.max() * 0.9 + rng.uniform(0, 0.1, ramp.shape))
      masks = []
      for g, has_lesion in enumerate(lesion_by_grader):
        mask = np.zeros((LIDC_V1_SIZE, LIDC_V1_SIZE), np.uint8)
        if has_lesion:  # Graders disagree on the lesion's extent.
          mask[50:60 + 4 * g, 48:70] = 1
        masks.append(mask)
      slices[f'series{s}_slice{z}'] = {'image': image.astype(np.float32),
                                       'masks': masks, 'series_uid': uid}
  return slices


def write_lidc_v1_pickle(root, slices=None, num_files: int = 1):
  """Writes the slices as `data_lidc.pickle` (or `num_files` parts).

  Returns:
    The slices written (see `lidc_v1_slices`).
  """
  import pickle  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  slices = lidc_v1_slices() if slices is None else slices
  keys = list(slices)
  for part in range(num_files):
    name = 'data_lidc.pickle' if num_files == 1 else f'lidc_part{part}.pickle'
    with open(root / name, 'wb') as f:
      pickle.dump({k: slices[k] for k in keys[part::num_files]}, f)
  return slices


def write_lidc_v1_hdf5(root, labels_layout: str = 'phiseg'):
  """Writes `data_lidc.hdf5` as PHiSeg's `lidc_data_loader.py` does.

  Groups `train` / `val` / `test` with `images` float64 [N, 128, 128]
  (image - 0.5), `labels` uint8 [N, 128, 128, 4] ('phiseg') or
  [N, 4, 128, 128] ('ccdm', their copy without the transpose) and `uids`
  int64 [N] (PHiSeg stores Python's `hash()` of the series uid).

  Returns:
    {'<group>/<index>': slice dict (see `lidc_v1_slices`) plus 'uid'}.
  """
  import h5py  # pylint: disable=g-import-not-at-top
  import zlib  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  slices = lidc_v1_slices()
  series = list(LIDC_V1_LAYOUT)
  written = {}
  with h5py.File(root / 'data_lidc.hdf5', 'w') as f:
    for group, members in LIDC_V1_HDF5_GROUPS.items():
      chosen = [v for v in slices.values()
                if series.index(v['series_uid']) in members]
      labels = np.stack([np.stack(v['masks'], axis=-1) for v in chosen])
      if labels_layout == 'ccdm':
        labels = np.moveaxis(labels, -1, 1)
      uids = np.asarray([zlib.crc32(v['series_uid'].encode())
                         for v in chosen], np.int64)
      g = f.create_group(group)
      g.create_dataset('uids', data=uids)
      g.create_dataset('labels', data=labels.astype(np.uint8))
      g.create_dataset('images', data=np.stack(
          [v['image'].astype(np.float64) - 0.5 for v in chosen]))
      for i, v in enumerate(chosen):
        written[f'{group}/{i:05d}'] = dict(v, uid=str(uids[i]))
  return written


# --- SNEMI3D ------------------------------------------------------------------

SNEMI_SLICES = 4
SNEMI_SIZE = 64


def write_snemi3d(root) -> tuple[np.ndarray, np.ndarray]:
  """Writes `train-input.tif` and `train-labels.tif`: 4 slices of 64x64.

  Args:
    root: directory to write into.

  Returns:
    (EM uint8 [Z, H, W], neurite ids uint32 [Z, H, W], 0 = membrane).
  """
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(1)
  shape = (SNEMI_SLICES, SNEMI_SIZE, SNEMI_SIZE)
  em = rng.integers(0, 256, shape, dtype=np.uint8)
  # 8x8 cells, each its own neurite id (large, as in the real labels), with
  # 1-pixel membrane (0) borders; ids continue through z like real neurites.
  rows, cols = np.meshgrid(np.arange(SNEMI_SIZE), np.arange(SNEMI_SIZE),
                           indexing='ij')
  cell = (rows // 8) * (SNEMI_SIZE // 8) + cols // 8
  labels = np.broadcast_to(70000 + cell * 3, shape).astype(np.uint32).copy()
  labels[:, ::8, :] = 0
  labels[:, :, ::8] = 0
  labels[2:, 4:28, 4:28] = 123456  # A neurite that merges cells higher in z.
  tifffile.imwrite(root / 'train-input.tif', em, photometric='minisblack')
  tifffile.imwrite(root / 'train-labels.tif', labels, photometric='minisblack')
  return em, labels


# --- Cityscapes ---------------------------------------------------------------

CITYSCAPES_HEIGHT = 16
CITYSCAPES_WIDTH = 32
# official split -> city -> number of images.
CITYSCAPES_LAYOUT = {
    'train': {'aachen': 2, 'ulm': 1},  # ulm is held out as validation.
    'val': {'frankfurt': 1},
}


def cityscapes_stem(city: str, index: int) -> str:
  return f'{city}_{index:06d}_000019'


def _cityscapes_labels(index: int) -> tuple[np.ndarray, np.ndarray]:
  """(labelIds uint8, instanceIds uint16) `[16, 32]` for image `index`.

  Left half road (7), right half sky (23); three cars (26); a person (24); a
  bicycle group (33, no instance number); an unlabeled (0) patch; one 255
  (license plate) pixel. Everything but the 1-pixel car at (0, 30) covers odd
  rows and columns, which a 2x nearest-neighbour downsampling keeps.
  """
  label_ids = np.full((CITYSCAPES_HEIGHT, CITYSCAPES_WIDTH), 7, np.uint8)
  label_ids[:, 16:] = 23
  label_ids[14:16, 8:12] = 0
  instance_ids = label_ids.astype(np.uint16)
  cars = [(slice(1, 5), slice(1, 5)),
          (slice(9, 13), slice(5 + index, 9 + index)),
          (slice(0, 1), slice(30, 31))]
  for k, (rows, cols) in enumerate(cars):
    label_ids[rows, cols] = 26
    instance_ids[rows, cols] = 26000 + k
  label_ids[5:9, 20:24] = 24
  instance_ids[5:9, 20:24] = 24000
  label_ids[13:15, 25:27] = 33
  instance_ids[13:15, 25:27] = 33
  label_ids[13, 3] = 255
  instance_ids[13, 3] = 0
  return label_ids, instance_ids


def write_cityscapes(root) -> dict[str, dict[str, dict[str, np.ndarray]]]:
  """Writes `leftImg8bit/` and `gtFine/` (labelIds, instanceIds) PNGs.

  Args:
    root: directory to write into.

  Returns:
    {official split: {stem: {'image': uint8 [H, W, 3], 'label_ids': uint8
    [H, W], 'instance_ids': uint16 [H, W]}}}.
  """
  root = pathlib.Path(root)
  rng = np.random.default_rng(2)
  written = {}
  index = 0
  for split, cities in CITYSCAPES_LAYOUT.items():
    written[split] = {}
    for city, count in cities.items():
      image_dir = root / 'leftImg8bit' / split / city
      gt_dir = root / 'gtFine' / split / city
      image_dir.mkdir(parents=True)
      gt_dir.mkdir(parents=True)
      for _ in range(count):
        stem = cityscapes_stem(city, index)
        image = rng.integers(
            0, 256, (CITYSCAPES_HEIGHT, CITYSCAPES_WIDTH, 3), dtype=np.uint8)
        label_ids, instance_ids = _cityscapes_labels(index)
        (image_dir / f'{stem}_leftImg8bit.png').write_bytes(
            image_codec.encode_png(image))
        (gt_dir / f'{stem}_gtFine_labelIds.png').write_bytes(
            image_codec.encode_png(label_ids))
        (gt_dir / f'{stem}_gtFine_instanceIds.png').write_bytes(
            image_codec.encode_png(instance_ids))
        written[split][stem] = {'image': image, 'label_ids': label_ids,
                                'instance_ids': instance_ids}
        index += 1
  return written


def write_dummy_data(datasets_dir) -> None:
  """Rewrites `<datasets_dir>/<builder>/dummy_data/` from the fixtures above."""
  datasets_dir = pathlib.Path(datasets_dir)
  for name, write in (('lidc_crops', write_lidc), ('snemi3d', write_snemi3d),
                      ('cityscapes_cars', write_cityscapes)):
    target = datasets_dir / name / 'dummy_data'
    if target.exists():
      raise FileExistsError(f'{target}: remove it first to rewrite it')
    write(target)


if __name__ == '__main__':
  write_dummy_data(pathlib.Path(__file__).resolve().parents[1] / 'datasets')


# --- Building -----------------------------------------------------------------


def build(builder_cls, manual_dir, data_dir, **builder_kwargs):
  """Prepares `builder_cls` as array_record from `manual_dir`; returns it."""
  builder = builder_cls(data_dir=str(data_dir), **builder_kwargs)
  builder.download_and_prepare(
      file_format='array_record',
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def prepared_files(data_dir, name: str) -> list[pathlib.Path]:
  """Data set files (records, infos, temporary dirs) of builder `name`."""
  builder_dir = pathlib.Path(data_dir) / name
  if not builder_dir.exists():
    return []
  return sorted(p for p in builder_dir.rglob('*')
                if 'array_record' in p.name or p.name == 'dataset_info.json'
                or 'incomplete' in p.name)
