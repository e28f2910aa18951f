r"""SNEMI3D neurite instances in EM slices (paper Sec. 4, Appx. D.2).

  python -m experiments.train --config=experiments/snemi3d.py:hpunet \
      --workdir=/tmp/snemi3d --config.data.manual_dir=/path/to/snemi3d

`manual_dir` holds `train-input.tif` and `train-labels.tif`; the TFDS data set
(z 0-79 / 80-89 / 90-99, 256x256 crops) is built on first use. Each time an
example is drawn its neurite ids are mapped at random to 15 labels.

Config argument (after `:`): one variant, optionally `,tiny`:
  hpunet  HPU-Net, 9 scales, 4 scalar latent scales = 85 latents (default).
  spunet  standard Probabilistic U-Net, 9 scales, 85 global latents, ELBO.
  extrapolate  the HPU-Net completing the segmentation above a random
          line (Sec. 3.3, Fig. 5); the prior also sees the visible labels.
  tiny    (modifier) 32x32 crops, 8-channel 4-level model, batch 2, 4 steps.
"""
import ml_collections

from experiments import config_common

VARIANTS = ('hpunet', 'spunet', 'extrapolate')
NUM_STEPS = 450_000  # Paper: 450k iterations, both models.
NUM_INSTANCE_IDS = 15  # Paper: instance ids limited to 15.


def get_config(arg=None) -> ml_collections.ConfigDict:
  variant, tiny = config_common.parse_arg(arg, VARIANTS, default='hpunet')
  config = config_common.base_config(
      image_size=(256, 256),  # The stored crops; 9 scales reach 1x1.
      batch_size=24,  # Paper, both models.
      num_train_steps=NUM_STEPS,
      log_every_steps=100,
      checkpoint_every_steps=5000)
  config.data = config_common.data_config('snemi3d', builder_config='paper')
  config.data.num_instance_ids = NUM_INSTANCE_IDS  # K = this + 1.
  # Elastic deformation, rotation, mirroring, shearing, scaling and a randomly
  # translated crop (Appx. D.2); EM has no preferred orientation.
  config.augment = config_common.augment_config(
      config.get_ref('image_size'), rotation_degrees=180.0,
      scale_range=(0.85, 1.15), shear=5.0, elastic_sigma=8.0,
      elastic_alpha=2.0, flip=True, flip_vertical=True)
  # Rand error of 16 clustered samples (alpha = 16); eroded-away pixels
  # without a valid neighbour keep their id (Appx. H).
  config.eval = config_common.eval_config(
      num_samples=16, cluster_alpha=16, cluster_no_neighbour='keep')
  num_classes = config.data.get_ref('num_instance_ids') + 1

  if variant == 'spunet':
    config.model_type = 'spunet'
    # 9 scales, 24 channels doubled up to 192, three 3x3 convs per scale,
    # 85 global latents (fewer never converged, Appx. D.2).
    config.model = config_common.spunet_model(
        channels_per_level=config_common.doubling_channels(24, 9),
        convs_per_level=3, latent_dim=85, num_classes=num_classes,
        num_comb_convs=4, num_input_channels=1)
    config.loss = config_common.elbo_loss(beta=1.0)
  else:
    config.model_type = 'hpunet'
    # 9 scales, 32 channels doubled up to 256, three res-blocks per scale,
    # four scalar latent scales (1x1, 2x2, 4x4, 8x8: 85 latents).
    config.model = config_common.hpunet_model(
        channels_per_level=config_common.doubling_channels(32, 9),
        latent_dims=(1, 1, 1, 1), num_classes=num_classes,
        blocks_per_level=3, convs_per_block=3, num_input_channels=1)
    config.loss = config_common.geco_loss(kappa=1.20)
  if variant == 'extrapolate':
    # Sec. 3.3: hide the image above a random line (25-75% of the rows, our
    # choice) and give the prior the ground truth of the visible part, so it
    # keeps the instance ids it sees; the loss covers the whole image.
    config.masking = config_common.masking_config(
        num_classes, mode='line', min_fraction=0.25, max_fraction=0.75)
    # Image + K one-hot visible labels + visibility map; the last K + 1 go
    # to the prior only.
    config.model.num_input_channels = 1 + num_classes + 1
    config.model.num_prior_only_channels = num_classes + 1
  # 1e-4 lowered to 1e-7 in 5 steps (both models); no gradient clipping,
  # as in the paper.
  config.optimizer = config_common.adam(*config_common.geometric_schedule(
      1e-4, 1e-7, num_drops=5, num_steps=NUM_STEPS), clip_global_norm=None)

  if tiny:
    config_common.make_tiny(config)
    config.image_size = (32, 32)
    config.data.num_instance_ids = 3
    if config.model_type == 'spunet':
      config.model.channels_per_level = (8, 8, 8)
      config.model.convs_per_level = 1
      config.model.latent_dim = 3
      config.model.num_comb_convs = 2
    else:
      config.model.channels_per_level = (8, 8, 8, 8)
      config.model.latent_dims = (1, 1)
      config.model.blocks_per_level = 1
  return config
