r"""Cityscapes car instances (paper Sec. 4, Appx. D.3).

  python -m experiments.train --config=experiments/cityscapes.py \
      --workdir=/tmp/cityscapes --config.data.manual_dir=/path/to/cityscapes \
      --config.mesh_shape='(64,2)'

`manual_dir` holds `leftImg8bit/` and `gtFine/`; the TFDS data set (512x1024,
darmstadt / moenchengladbach / ulm held out as validation, the official val
set as test) is built on first use. The paper trained with batch 128 on TPUs
with spatial batch partitioning: `mesh_shape=(data, spatial)` splits the batch
over `data` devices and each image's height over `spatial` devices.

Classes: the 19 train classes with 'car' replaced by `num_car_ids` car classes,
one drawn at random per car each time an example is drawn (K = 18 + 5).

Config argument (after `:`): the only variant is `hpunet` (default),
optionally `,tiny` (images resized to 32x64, 8-channel 4-level model, batch 2,
4 steps, for CPU tests).
"""
import ml_collections

from experiments import config_common

VARIANTS = ('hpunet',)
NUM_STEPS = 100_000  # Paper: 100k iterations.
NUM_CAR_IDS = 5  # Paper: car ids limited to 5.
NUM_OTHER_CLASSES = 18  # The 19 train classes without 'car'.


def get_config(arg=None) -> ml_collections.ConfigDict:
  _, tiny = config_common.parse_arg(arg, VARIANTS, default='hpunet')
  config = config_common.base_config(
      image_size=(512, 1024),  # Half resolution; 9 scales give a 2x4 bottom.
      batch_size=128,  # Paper (TPUs, spatial batch partitioning).
      num_train_steps=NUM_STEPS,
      log_every_steps=100,
      checkpoint_every_steps=2000)
  config.data = config_common.data_config('cityscapes_cars',
                                          builder_config='paper')
  config.data.num_car_ids = NUM_CAR_IDS  # K = 18 + this.
  # Resize stored images to this (H, W) for training and evaluation; None =
  # the stored 512x1024.
  config.data.image_size = ml_collections.config_dict.placeholder(tuple)
  # Colour augmentation, elastic deformation, rotation, mirroring, shearing,
  # scaling and a randomly translated crop (Appx. D.3); strengths are ours.
  config.augment = config_common.augment_config(
      config.get_ref('image_size'), rotation_degrees=5.0,
      scale_range=(0.8, 1.25), shear=2.0, elastic_sigma=16.0,
      elastic_alpha=2.0, flip=True, colour_jitter=0.1)
  # Clusters of 32 samples, alpha = 32; eroded-away pixels without a valid
  # neighbour become background (Appx. G, H).
  config.eval = config_common.eval_config(
      num_samples=32, cluster_alpha=32, cluster_no_neighbour='background')
  # The official evaluator's smallest instance (100 px at 1024x2048), scaled
  # to the 512x1024 images we evaluate at.
  config.eval.ap_min_region_size = 25

  config.model_type = 'hpunet'
  # 9 scales, 32 channels doubled up to 256, two res-blocks per scale, four
  # latent scales (2x4 ... 16x32); the paper does not give the latent
  # channels, we use one per scale as on LIDC and SNEMI3D.
  config.model = config_common.hpunet_model(
      channels_per_level=config_common.doubling_channels(32, 9),
      latent_dims=(1, 1, 1, 1),
      num_classes=config.data.get_ref('num_car_ids') + NUM_OTHER_CLASSES,
      blocks_per_level=2, convs_per_block=3, num_input_channels=3)
  config.loss = config_common.geco_loss(kappa=0.77)
  # 2e-4, halved after 70k iterations; no gradient clipping, as in the
  # paper.
  config.optimizer = config_common.adam(boundaries=(70_000,),
                                        learning_rates=(2e-4, 1e-4),
                                        clip_global_norm=None)

  if tiny:
    config_common.make_tiny(config)
    config.image_size = (32, 64)
    config.data.image_size = (32, 64)
    config.data.num_car_ids = 2
    config.model.channels_per_level = (8, 8, 8, 8)
    config.model.latent_dims = (1, 1)
    config.model.blocks_per_level = 1
  return config
