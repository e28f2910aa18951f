"""Cityscapes (fine annotations) with the 19 train classes and car instances.

Raw layout in `manual_dir` (leftImg8bit_trainvaltest.zip and
gtFine_trainvaltest.zip, extracted):

  leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
  gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png

As in Kohl et al. 2019 the official `val` split is the `test` split, and the
cities `validation_cities` (darmstadt, moenchengladbach, ulm) are held out of
the official `train` split as `validation`. Images are resized to
`image_height x image_width` (Pillow's bilinear filter, which widens with the
scale factor and so antialiases); label maps are resized by nearest neighbour
(the pixel whose centre is closest). Example keys are the file stems
`<city>_<seq>_<frame>`.

Label conventions: labelIds must lie in 0..33 (the ids of
`cityscapesscripts.helpers.labels`) or be 255, read as the uint8 form of the
license plate id -1 and mapped to the ignore train id 255; other values are an
error. In instanceIds, values >= 1000 are `label_id * 1000 + k`; car (26)
instances become 1..n per image in order of k. Pixels of a car group (instance
value 26, no k) keep train id 13 (car) but car instance 0.
"""
import dataclasses
import pathlib

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

CAR_LABEL_ID = 26
MAX_LABEL_ID = 33  # Labels 0..33; license plate (-1) is not drawn in labelIds.
LICENSE_PLATE_LABEL_ID = 255  # Id -1 as an 8-bit labelIds PNG would store it.
IGNORE_TRAIN_ID = 255
NUM_TRAIN_CLASSES = 19
# labelId -> trainId of the 19 train classes, from the `labels` table of
# cityscapesscripts/helpers/labels.py (github.com/mcordts/cityscapesScripts).
# Every other labelId (void, parking, rail track, guard rail, bridge, tunnel,
# polegroup, caravan, trailer) has trainId 255 = ignore.
LABEL_ID_TO_TRAIN_ID = {
    7: 0,    # road
    8: 1,    # sidewalk
    11: 2,   # building
    12: 3,   # wall
    13: 4,   # fence
    17: 5,   # pole
    19: 6,   # traffic light
    20: 7,   # traffic sign
    21: 8,   # vegetation
    22: 9,   # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Log in at https://www.cityscapes-dataset.com/downloads/, download
leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip and extract both into
manual_dir, giving manual_dir/leftImg8bit/{train,val}/<city>/*.png and
manual_dir/gtFine/{train,val}/<city>/*.png.
"""


def _helpers():
  """This repository's `(image_codec, raw_checks)` modules.

  `tfds build datasets/cityscapes_cars` imports this file while TFDS has put
  its HuggingFace stand-in at `sys.modules['datasets']`, so the repository's
  `datasets` helpers are imported on first use, not at module import.
  """
  # pylint: disable-next=g-import-not-at-top
  from datasets import image_codec, raw_checks
  return image_codec, raw_checks


@dataclasses.dataclass(eq=False)
class CityscapesCarsConfig(tfds.core.BuilderConfig):
  """Output size and the validation hold-out.

  Attributes:
    image_height: height of the stored images and label maps, in pixels.
    image_width: width of the stored images and label maps, in pixels.
    validation_cities: cities of the official train split kept as validation.
  """
  image_height: int = 512
  image_width: int = 1024
  validation_cities: tuple[str, ...] = ('darmstadt', 'moenchengladbach', 'ulm')

  def __post_init__(self):
    if self.image_height < 1 or self.image_width < 1:
      raise ValueError('image_height and image_width must be positive, got '
                       f'{self.image_height}x{self.image_width}')


@dataclasses.dataclass(frozen=True)
class FrameFiles:
  """The three files of one Cityscapes frame."""
  city: str
  stem: str  # `<city>_<seq>_<frame>`
  image: pathlib.Path
  label_ids: pathlib.Path
  instance_ids: pathlib.Path


def index_official_split(root: pathlib.Path, split: str) -> list[FrameFiles]:
  """Lists the frames of one official split with their label files.

  Args:
    root: the manual directory.
    split: `train` or `val`.

  Returns:
    The frames, sorted by city and stem.

  Raises:
    RawDataError: a missing directory, image or label file.
  """
  _, errors = _helpers()
  image_root = errors.require_dir(root / 'leftImg8bit' / split,
                                  'extracted leftImg8bit_trainvaltest.zip')
  label_root = errors.require_dir(root / 'gtFine' / split,
                                  'extracted gtFine_trainvaltest.zip')
  frames = []
  for city_dir in sorted(p for p in image_root.iterdir() if p.is_dir()):
    for image_path in sorted(city_dir.glob('*_leftImg8bit.png')):
      stem = image_path.name[:-len('_leftImg8bit.png')]
      label_dir = label_root / city_dir.name
      frames.append(FrameFiles(
          city=city_dir.name, stem=stem, image=image_path,
          label_ids=errors.require_file(
              label_dir / f'{stem}_gtFine_labelIds.png', f'labels of {stem}'),
          instance_ids=errors.require_file(
              label_dir / f'{stem}_gtFine_instanceIds.png',
              f'instances of {stem}')))
  errors.check_not_empty(frames, split, str(image_root))
  return frames


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 [H, W, 3] -> [height, width, 3] with Pillow's bilinear filter."""
  return np.asarray(Image.fromarray(image).resize(
      (width, height), resample=Image.Resampling.BILINEAR))


def _resize_nearest(labels: np.ndarray, height: int, width: int) -> np.ndarray:
  """[H, W] -> [height, width], taking the source pixel nearest each centre."""
  rows = ((np.arange(height) + 0.5) * labels.shape[0] / height).astype(int)
  cols = ((np.arange(width) + 0.5) * labels.shape[1] / width).astype(int)
  return labels[rows[:, None], cols[None, :]]


def train_ids(label_ids: np.ndarray) -> np.ndarray:
  """labelIds [H, W] (0..33 or 255) -> uint8 trainIds [H, W], 255 = ignore."""
  lookup = np.full(256, IGNORE_TRAIN_ID, np.uint8)
  for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
    lookup[label_id] = train_id
  return lookup[label_ids]


def car_instances(instance_ids: np.ndarray) -> np.ndarray:
  """instanceIds [H, W] -> int32 [H, W]: 0 = no car, 1..n = cars in order."""
  is_car = (instance_ids >= 1000) & (instance_ids // 1000 == CAR_LABEL_ID)
  car_ids = np.unique(instance_ids[is_car])
  out = np.zeros(instance_ids.shape, np.int32)
  out[is_car] = np.searchsorted(car_ids, instance_ids[is_car]) + 1
  return out


def load_example(frame: FrameFiles, config: CityscapesCarsConfig
                 ) -> dict[str, object]:
  """Reads, checks and resizes one frame; returns the TFDS example dict."""
  image_codec, errors = _helpers()
  image = errors.read_png(frame.image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise errors.RawDataError(
        f'{frame.image}: expected an 8-bit RGB image, got shape {image.shape} '
        f'and dtype {image.dtype}')
  label_ids = errors.read_png(frame.label_ids)
  instance_ids = errors.read_png(frame.instance_ids)
  for path, labels in ((frame.label_ids, label_ids),
                       (frame.instance_ids, instance_ids)):
    if not np.issubdtype(labels.dtype, np.integer):
      raise errors.RawDataError(
          f'{path}: expected an integer label map, got dtype {labels.dtype}')
    errors.check_shape(labels, image.shape[:2], path,
                       f'label map ({frame.image.name} is {image.shape[:2]})')
  errors.check_values(
      label_ids, list(range(MAX_LABEL_ID + 1)) + [LICENSE_PLATE_LABEL_ID],
      frame.label_ids, 'labelIds')
  is_instance = instance_ids >= 1000
  bad = ((instance_ids < 0)
         | (is_instance & (instance_ids // 1000 > MAX_LABEL_ID))
         | (~is_instance & (instance_ids > MAX_LABEL_ID)
            & (instance_ids != LICENSE_PLATE_LABEL_ID)))
  if bad.any():
    raise errors.RawDataError(
        f'{frame.instance_ids}: instance ids must be label ids 0..33 (or 255) '
        f'or label_id * 1000 + k, got {instance_ids[bad][0]}')

  height, width = config.image_height, config.image_width
  if image.shape[:2] != (height, width):
    image = resize_image(image, height, width)
    label_ids = _resize_nearest(label_ids, height, width)
    instance_ids = _resize_nearest(instance_ids, height, width)
  return {
      'image': image_codec.encode_png(image),
      'train_ids': train_ids(label_ids),
      'car_instances': car_instances(instance_ids),
      'key': frame.stem,
      'city': frame.city,
  }


class Builder(tfds.core.GeneratorBasedBuilder):
  """Cityscapes fine annotations: 19 train classes and car instances."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'gtFine train/val, resized, read from manual_dir.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
      CityscapesCarsConfig(
          name='paper',
          description='Kohl et al. 2019: 512x1024, validation = darmstadt, '
          'moenchengladbach, ulm.'),
      # The 16x32 `dummy_data/` halved; of the validation cities it has ulm.
      CityscapesCarsConfig(
          name='tiny', image_height=8, image_width=16,
          validation_cities=('ulm',),
          description='8x16, validation = ulm (dummy data).'),
  ]
  DEFAULT_CONFIG_NAME = 'paper'

  def _info(self) -> tfds.core.DatasetInfo:
    shape = (self.builder_config.image_height, self.builder_config.image_width)
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(
                shape=shape + (3,), dtype=np.uint8, encoding_format='png'),
            # [H, W] in 0..18, 255 = ignore.
            'train_ids': tfds.features.Tensor(shape=shape, dtype=np.uint8),
            # [H, W], 0 = no car, 1..n = the cars of this image.
            'car_instances': tfds.features.Tensor(shape=shape, dtype=np.int32),
            'key': tfds.features.Text(),
            'city': tfds.features.Text(),
        }),
        homepage='https://www.cityscapes-dataset.com/',
    )

  def _split_generators(self, dl_manager):
    _, errors = _helpers()
    root = errors.manual_dir(dl_manager)
    held_out = set(self.builder_config.validation_cities)
    official_train = index_official_split(root, 'train')
    missing = sorted(held_out - {frame.city for frame in official_train})
    if missing:
      raise errors.RawDataError(
          f'{root / "leftImg8bit" / "train"}: validation cities {missing} of '
          f'config {self.builder_config.name!r} have no images there')
    frames = {
        'train': [f for f in official_train if f.city not in held_out],
        'validation': [f for f in official_train if f.city in held_out],
        'test': index_official_split(root, 'val'),
    }
    errors.check_not_empty(frames['train'], 'train',
                           str(root / 'leftImg8bit' / 'train'))
    return {split: self._generate_examples(f) for split, f in frames.items()}

  def _generate_examples(self, frames):
    for frame in frames:
      yield frame.stem, load_example(frame, self.builder_config)
