r"""LIDC-IDRI lung lesions (paper Sec. 4, Appx. D.1, ablations Appx. F).

  python -m experiments.train --config=experiments/lidc.py:hpunet \
      --workdir=/tmp/lidc --config.data.manual_dir=/path/to/lidc_crops

`manual_dir` holds the unpacked HPU-Net release (`train/`, `val/`, `test/`);
the TFDS data set is built from it into `config.data.data_dir` on first use.

Config argument (after `:`): one variant, optionally `,tiny`:
  hpunet          HPU-Net, 8 scales, 4 scalar latent scales (default).
  spunet          standard Probabilistic U-Net: 5 scales, 6 global latents,
                  ELBO (beta = 1).
  global_latents  HPU-Net topology, one 85-dim latent in the 1x1 bottom,
                  kappa = 0.15 (Table 2).
  local_latents   HPU-Net topology, only the finest (8x8) latent grid.
  no_topk         HPU-Net without the top-k reconstruction loss.
  tiny            (modifier) 32x32 crops, 8-channel 4-level model, batch 2,
                  4 steps, for CPU tests.
"""
import ml_collections

from experiments import config_common

VARIANTS = ('hpunet', 'spunet', 'global_latents', 'local_latents', 'no_topk')
NUM_STEPS = 240_000  # Paper: 240k iterations, every model.


def get_config(arg=None) -> ml_collections.ConfigDict:
  variant, tiny = config_common.parse_arg(arg, VARIANTS, default='hpunet')
  config = config_common.base_config(
      image_size=(128, 128),  # Random 128x128 crops of the 180x180 tiles.
      batch_size=32,  # Paper, both models.
      num_train_steps=NUM_STEPS,
      log_every_steps=100,
      checkpoint_every_steps=5000)
  config.data = config_common.data_config('lidc_crops', builder_config=None)
  # Elastic deformation, rotation, mirroring, shearing, scaling and a randomly
  # translated crop (Appx. D.1); the paper does not give the strengths.
  config.augment = config_common.augment_config(
      config.get_ref('image_size'), rotation_degrees=15.0,
      scale_range=(0.85, 1.15), shear=5.0, elastic_sigma=8.0,
      elastic_alpha=2.0, flip=True)
  # GED at 16 and at 100 samples, Hungarian-matched IoU at 16.
  config.eval = config_common.eval_config(num_samples=100)

  if variant == 'spunet':
    config.model_type = 'spunet'
    # 5 scales, three 3x3 convs each, 6 global latents, three 1x1 convs + the
    # logits layer in f_comb: the setup of Kohl et al. 2018 (their channel
    # widths 32, 64, 128, 192, 192).
    config.model = config_common.spunet_model(
        channels_per_level=(32, 64, 128, 192, 192), convs_per_level=3,
        latent_dim=6, num_classes=2, num_comb_convs=4, num_input_channels=1)
    config.loss = config_common.elbo_loss(beta=1.0)
    # "learning rate schedule 0.5e-5 -> 1e-6": one drop, at half time.
    boundaries, learning_rates = config_common.geometric_schedule(
        5e-6, 1e-6, num_drops=1, num_steps=NUM_STEPS)
  else:
    config.model_type = 'hpunet'
    # 8 scales: 128 -> 1x1 bottom; 24 channels doubled up to 192.
    config.model = config_common.hpunet_model(
        channels_per_level=config_common.doubling_channels(24, 8),
        latent_dims={'global_latents': (85,),
                     'local_latents': (0, 0, 0, 1)}.get(variant,
                                                        (1, 1, 1, 1)),
        num_classes=2, blocks_per_level=3, convs_per_block=3,
        num_input_channels=1)
    config.loss = config_common.geco_loss(
        kappa=0.15 if variant == 'global_latents' else 0.05,
        top_k_fraction=0.0 if variant == 'no_topk' else 0.02)
    # 1e-4 lowered to 0.5e-5 in 4 steps over 240k iterations.
    boundaries, learning_rates = config_common.geometric_schedule(
        1e-4, 5e-6, num_drops=4, num_steps=NUM_STEPS)
  # The paper clips no gradients (clip_global_norm None).
  config.optimizer = config_common.adam(boundaries, learning_rates,
                                        clip_global_norm=None)

  if tiny:
    config_common.make_tiny(config)
    config.image_size = (32, 32)
    if config.model_type == 'spunet':
      config.model.channels_per_level = (8, 8, 8)
      config.model.convs_per_level = 1
      config.model.num_comb_convs = 2
    else:
      config.model.channels_per_level = (8, 8, 8, 8)
      config.model.latent_dims = {'global_latents': (3,),
                                  'local_latents': (0, 1)}.get(variant, (1, 1))
      config.model.blocks_per_level = 1
  return config
