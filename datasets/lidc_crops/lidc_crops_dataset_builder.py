"""LIDC-IDRI lesion crops as released with the HPU-Net (Kohl et al. 2019).

Raw layout in `manual_dir` (the extracted `train/val/test.tar.gz` archives):

  <split>/images/<patient>/z-<z>_c<c>.png        180x180 uint8 CT crop
  <split>/gt/<patient>/z-<z>_c<c>_l<g>.png       one 0/255 mask per grader

Each image has exactly 4 grader masks, numbered 0..3 (as the release's notebook
reads them) or 1..4 (as its README says); one image may not mix the two. Splits
are the release's patient-level directories: `train`, `val` -> `validation`,
`test`. Example keys are `<patient>/z-<z>_c<c>`.
"""
import dataclasses
import pathlib
import re

import numpy as np
import tensorflow_datasets as tfds

CROP_SIZE = 180  # Side of the released crops, in pixels.
NUM_GRADERS = 4
# Grader numbering conventions accepted; masks are stacked in this order.
GRADER_ID_CONVENTIONS = ((0, 1, 2, 3), (1, 2, 3, 4))
# TFDS split name -> directory of the release.
RAW_SPLIT_DIRS = {'train': 'train', 'validation': 'val', 'test': 'test'}

_IMAGE_NAME = re.compile(r'^(?P<stem>z-.+_c\d+)\.png$')
_MASK_NAME = re.compile(r'^(?P<stem>z-.+_c\d+)_l(?P<grader>\d+)\.png$')

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download train.tar.gz, val.tar.gz and test.tar.gz of the LIDC-IDRI crops
released with the Hierarchical Probabilistic U-Net (links in the README of
https://github.com/deepmind/deepmind-research/tree/master/hierarchical_probabilistic_unet)
and extract all three into manual_dir, giving
manual_dir/{train,val,test}/{images,gt}/<patient>/*.png.
"""


def _helpers():
  """This repository's `(image_codec, raw_checks)` modules.

  `tfds build datasets/lidc_crops` imports this file while TFDS has put its
  HuggingFace stand-in at `sys.modules['datasets']`, so the repository's
  `datasets` helpers are imported on first use, not at module import.
  """
  # pylint: disable-next=g-import-not-at-top
  from datasets import image_codec, raw_checks
  return image_codec, raw_checks


@dataclasses.dataclass(frozen=True)
class CropFiles:
  """One crop and its grader masks (in grader order)."""
  patient: str
  stem: str  # `z-<z>_c<c>`
  image: pathlib.Path
  masks: tuple[pathlib.Path, ...]

  @property
  def key(self) -> str:
    return f'{self.patient}/{self.stem}'


def _masks_by_stem(gt_dir: pathlib.Path) -> dict[str, dict[int, pathlib.Path]]:
  """`gt/<patient>` directory -> {image stem: {grader id: mask path}}."""
  _, errors = _helpers()
  masks = {}
  for path in sorted(gt_dir.glob('*.png')):
    match = _MASK_NAME.match(path.name)
    if not match:
      raise errors.RawDataError(
          f'{path}: mask name does not match z-<z>_c<c>_l<grader>.png')
    masks.setdefault(match['stem'], {})[int(match['grader'])] = path
  return masks


def index_split(split_dir: pathlib.Path) -> list[CropFiles]:
  """Lists every crop of one split directory with its masks, checking names.

  Args:
    split_dir: `manual_dir/<train|val|test>`.

  Returns:
    The crops, sorted by patient then file name.

  Raises:
    RawDataError: a missing directory, a badly named file, masks without an
      image, or an image without exactly 4 masks of one numbering convention.
  """
  _, errors = _helpers()
  images_dir = errors.require_dir(split_dir / 'images', 'LIDC crop images')
  gt_dir = errors.require_dir(split_dir / 'gt', 'LIDC grader masks')
  crops = []
  for patient_dir in sorted(p for p in images_dir.iterdir() if p.is_dir()):
    patient = patient_dir.name
    masks = _masks_by_stem(errors.require_dir(
        gt_dir / patient, f'grader masks of patient {patient}'))
    stems = set()
    for image_path in sorted(patient_dir.glob('*.png')):
      match = _IMAGE_NAME.match(image_path.name)
      if not match:
        raise errors.RawDataError(
            f'{image_path}: image name does not match z-<z>_c<c>.png')
      stem = match['stem']
      stems.add(stem)
      graders = masks.get(stem, {})
      if tuple(sorted(graders)) not in GRADER_ID_CONVENTIONS:
        found = ', '.join(p.name for _, p in sorted(graders.items())) or 'none'
        raise errors.RawDataError(
            f'{image_path}: expected {NUM_GRADERS} grader masks '
            f'{stem}_l0..3.png or {stem}_l1..4.png in {gt_dir / patient}, '
            f'found {found}')
      crops.append(CropFiles(
          patient=patient, stem=stem, image=image_path,
          masks=tuple(graders[g] for g in sorted(graders))))
    orphans = sorted(set(masks) - stems)
    if orphans:
      raise errors.RawDataError(
          f'{gt_dir / patient}: masks for {orphans[0]} have no image '
          f'{patient_dir / (orphans[0] + ".png")}')
  patients_without_images = sorted(
      {p.name for p in gt_dir.iterdir() if p.is_dir()}
      - {p.name for p in images_dir.iterdir() if p.is_dir()})
  if patients_without_images:
    raise errors.RawDataError(
        f'{gt_dir / patients_without_images[0]}: grader masks of a patient '
        f'with no images directory in {images_dir}')
  errors.check_not_empty(crops, split_dir.name, str(images_dir))
  return crops


def load_example(crop: CropFiles) -> dict[str, object]:
  """Reads and checks one crop; returns the TFDS example dict."""
  image_codec, errors = _helpers()
  image = errors.as_grayscale_uint8(errors.read_png(crop.image), crop.image)
  errors.check_shape(image, (CROP_SIZE, CROP_SIZE), crop.image, 'CT crop')
  graders = np.empty((NUM_GRADERS, CROP_SIZE, CROP_SIZE), np.uint8)
  for grader, mask_path in enumerate(crop.masks):
    mask = errors.as_grayscale_uint8(errors.read_png(mask_path), mask_path)
    errors.check_shape(mask, image.shape, mask_path,
                       f'mask (image {crop.image.name} is {image.shape})')
    errors.check_values(mask, (0, 255), mask_path, 'grader mask')
    graders[grader] = mask // 255
  return {
      'image': image_codec.encode_png(image),
      'graders': graders,
      'subset_b': bool(graders.reshape(NUM_GRADERS, -1).any(axis=1).all()),
      'patient_id': crop.patient,
      'key': crop.key,
  }


class Builder(tfds.core.GeneratorBasedBuilder):
  """LIDC-IDRI 180x180 lesion crops with the masks of 4 graders."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'HPU-Net release, read from manual_dir.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(
                shape=(CROP_SIZE, CROP_SIZE, 1), dtype=np.uint8,
                encoding_format='png'),
            # [G, H, W], 1 = lesion according to grader g.
            'graders': tfds.features.Tensor(
                shape=(NUM_GRADERS, CROP_SIZE, CROP_SIZE), dtype=np.uint8),
            # All four graders marked a lesion (the paper's subset B).
            'subset_b': np.bool_,
            'patient_id': tfds.features.Text(),
            'key': tfds.features.Text(),
        }),
        homepage='https://github.com/deepmind/deepmind-research/tree/master/'
        'hierarchical_probabilistic_unet',
    )

  def _split_generators(self, dl_manager):
    _, errors = _helpers()
    root = errors.manual_dir(dl_manager)
    # Index every split before writing anything, so naming errors surface fast.
    crops = {split: index_split(errors.require_dir(
        root / raw, f'extracted {raw}.tar.gz'))
             for split, raw in RAW_SPLIT_DIRS.items()}
    return {split: self._generate_examples(c) for split, c in crops.items()}

  def _generate_examples(self, crops):
    for crop in crops:
      yield crop.key, load_example(crop)
