r"""Synthetic cells: SNEMI3D-like instance segmentation of Voronoi cells.

  python -m experiments.train --config=experiments/synthetic_cells.py \
      --workdir=/tmp/cells

The data set is generated (no download) and built into `config.data.data_dir`
on first use. As on SNEMI3D, each time an image is drawn its cell ids are
mapped at random to `num_instance_ids` labels, so the model must learn a
distribution over labellings; evaluation clusters samples into instances and
reports the Rand error. Sized for a CPU: 64x64 images, 7 levels, 16-32
channels, three scalar latent scales.

Config argument (after `:`): one variant, optionally `,tiny`:
  hpunet  HPU-Net with GECO and top-k (default).
  spunet  standard Probabilistic U-Net, 21 global latents, ELBO.
  extrapolate  the HPU-Net completing the segmentation above a random
          line (Sec. 3.3, Fig. 5); the prior also sees the visible labels.
  tiny    (modifier) the 'tiny' 32x32 data set, 8-channel 4-level model,
          batch 2, 4 steps, for CPU tests.
"""
import ml_collections

from experiments import config_common

VARIANTS = ('hpunet', 'spunet', 'extrapolate')


def get_config(arg=None) -> ml_collections.ConfigDict:
  variant, tiny = config_common.parse_arg(arg, VARIANTS, default='hpunet')
  config = config_common.base_config(
      image_size=(64, 64),  # Must match the builder config's image size.
      batch_size=16,
      num_train_steps=1000,
      log_every_steps=50,
      checkpoint_every_steps=250)
  # Eigen convolutions measured no faster at 64x64 (benchmarks/README.md).
  config.xla_cpu_eigen_conv = False
  config.data = config_common.data_config('synthetic_cells',
                                          builder_config='default')
  config.data.num_instance_ids = 15  # As SNEMI3D; K = this + 1.
  config.augment = config_common.augment_config(
      config.get_ref('image_size'), flip=True, flip_vertical=True)
  # Rand error of 16 clustered samples, alpha = 16 (Appx. H, as SNEMI3D).
  config.eval = config_common.eval_config(
      num_samples=16, cluster_alpha=16, cluster_no_neighbour='keep')
  num_classes = config.data.get_ref('num_instance_ids') + 1

  if variant == 'spunet':
    config.model_type = 'spunet'
    config.model = config_common.spunet_model(
        channels_per_level=(16, 32, 32, 32, 32), convs_per_level=3,
        latent_dim=21, num_classes=num_classes, num_comb_convs=4,
        num_input_channels=1)
    config.loss = config_common.elbo_loss(beta=1.0)
  else:
    config.model_type = 'hpunet'
    config.model = config_common.hpunet_model(
        channels_per_level=(16, 32, 32, 32, 32, 32, 32),
        latent_dims=(1, 1, 1), num_classes=num_classes, blocks_per_level=1,
        convs_per_block=3, num_input_channels=1)
    config.loss = config_common.geco_loss(kappa=1.20)  # SNEMI3D's kappa.
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
  # A short run: a larger rate than the paper's, one drop at 70%. No
  # gradient clipping (None), as in the paper.
  config.optimizer = config_common.adam(boundaries=(700,),
                                        learning_rates=(5e-4, 1e-4),
                                        clip_global_norm=None)

  if tiny:
    config_common.make_tiny(config)
    config.image_size = (32, 32)
    config.data.builder_config = 'tiny'
    config.data.num_instance_ids = 3
    if config.model_type == 'spunet':
      config.model.channels_per_level = (8, 8, 8)
      config.model.convs_per_level = 1
      config.model.latent_dim = 3
      config.model.num_comb_convs = 2
    else:
      config.model.channels_per_level = (8, 8, 8, 8)
      config.model.latent_dims = (1, 1)
  return config
