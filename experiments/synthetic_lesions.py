r"""Synthetic lesions: LIDC-like, with an exactly known answer distribution.

  python -m experiments.train --config=experiments/synthetic_lesions.py \
      --workdir=/tmp/hpunet_lesions

The data set is generated (no download) and built into `config.data.data_dir`
on first use: version 2 (`default` builder config, 2-4 lesions whose outline
and presence probability the image shows exactly; docs/synthetic_study.md).
The earlier version 1 is `--config.data.builder_config=v1`
(with `--config.loss.kappa=0.05 --config.loss.geco_multiplier=adam` for its
old settings). The default is sized for a 2-core CPU: 64x64 images, a
7-level model with 16-32 channels, one res-block per level and three scalar
latent scales (1x1, 2x2, 4x4), 1500 steps. Scale up with e.g.
`--config.num_train_steps=5000 --config.batch_size=32`.

Config argument (after `:`): one variant, optionally `,tiny`:
  hpunet          HPU-Net with GECO and top-k (default).
  spunet          standard Probabilistic U-Net, 6 global latents, ELBO.
  global_latents  HPU-Net topology, one 21-dim latent in the 1x1 bottom (as
                  many latents as the hierarchy), kappa x3 as on LIDC.
  local_latents   HPU-Net topology, only the finest (4x4) latent grid.
  no_topk         HPU-Net without the top-k reconstruction loss.
  tiny            (modifier) the 'tiny' 32x32 data set, 8-channel 4-level
                  model, batch 2, 4 steps, for CPU tests.
"""
import ml_collections

from experiments import config_common

VARIANTS = ('hpunet', 'spunet', 'global_latents', 'local_latents', 'no_topk')


def get_config(arg=None) -> ml_collections.ConfigDict:
  variant, tiny = config_common.parse_arg(arg, VARIANTS, default='hpunet')
  config = config_common.base_config(
      image_size=(64, 64),  # Must match the builder config's image size.
      batch_size=16,
      num_train_steps=1500,
      log_every_steps=50,
      checkpoint_every_steps=250)
  # Eigen convolutions measured no faster at 64x64 (benchmarks/README.md).
  config.xla_cpu_eigen_conv = False
  config.data = config_common.data_config('synthetic_lesions',
                                          builder_config='default')
  # The generator is symmetric under mirroring: flips are free extra data.
  config.augment = config_common.augment_config(
      config.get_ref('image_size'), flip=True, flip_vertical=True)
  # GED at 16 and 100 samples, exact GED against the enumerated modes; the
  # first 200 test images keep the CPU evaluation short.
  config.eval = config_common.eval_config(num_samples=100)
  config.eval.num_examples = 200

  if variant == 'spunet':
    config.model_type = 'spunet'
    config.model = config_common.spunet_model(
        channels_per_level=(16, 32, 32, 32, 32), convs_per_level=3,
        latent_dim=6, num_classes=2, num_comb_convs=4, num_input_channels=1)
    config.loss = config_common.elbo_loss(beta=1.0)
  else:
    config.model_type = 'hpunet'
    # 64 -> 1x1 in 7 levels.
    config.model = config_common.hpunet_model(
        channels_per_level=(16, 32, 32, 32, 32, 32, 32),
        latent_dims={'global_latents': (21,),
                     'local_latents': (0, 0, 1)}.get(variant, (1, 1, 1)),
        num_classes=2, blocks_per_level=1, convs_per_block=3,
        num_input_channels=1)
    # kappa, calibrated for this task (the paper picks it per task; LIDC's
    # 0.05 per top-k pixel is out of reach here): a run of this config with
    # a large fixed multiplier (ELBO with beta = 0.01 = 1 / lambda, top-k on,
    # 600 steps; docs/synthetic_study.md, "Settings of the synthetic-lesions
    # config") reached 0.17 nats per top-k pixel (mean of
    # its last three logged steps), its floor at this budget. kappa = 0.25
    # lies about 1.5x above it, so
    # GECO can meet the constraint within the run and then trade the slack
    # for a smaller KL (lambda falls). x3 for the global-only model, as in
    # the paper's Table 2.
    kappa = 0.25
    # Lambda's own multiplicative update (Rezende & Viola 2018), not the
    # authors' v-in-Adam rule, under which lambda moves by about the
    # learning rate per step and stays in its rising phase for 10^4+ steps
    # (docs/synthetic_study.md, "GECO multiplier"). log lambda moves by rate x (constraint per
    # pixel, moving average): 0.02 gives about +0.006 per step at the start
    # (0.3 nats per pixel above kappa) and -0.003 per step at 0.15 below it.
    # Measured (docs/synthetic_study.md, "The main job and what GECO does"): lambda rises to 23.7 by step
    # 700, where the constraint is met, then falls to 1.5 by step 1500 while
    # the KL shrinks from 67 to 17-24 nats. 0.1 overshot to lambda 1.4e4.
    config.loss = config_common.geco_loss(
        kappa=3 * kappa if variant == 'global_latents' else kappa,
        top_k_fraction=0.0 if variant == 'no_topk' else 0.02,
        geco_multiplier='multiplicative', geco_multiplier_rate=0.02)
  # A short run: a larger rate than the paper's, one drop at 80%. No
  # gradient clipping (None), as in the paper.
  config.optimizer = config_common.adam(boundaries=(1200,),
                                        learning_rates=(5e-4, 1e-4),
                                        clip_global_norm=None)

  if tiny:
    config_common.make_tiny(config)
    config.image_size = (32, 32)
    config.data.builder_config = 'tiny'
    if config.model_type == 'spunet':
      config.model.channels_per_level = (8, 8, 8)
      config.model.convs_per_level = 1
      config.model.num_comb_convs = 2
    else:
      config.model.channels_per_level = (8, 8, 8, 8)
      config.model.latent_dims = {'global_latents': (3,),
                                  'local_latents': (0, 1)}.get(variant, (1, 1))
  return config
