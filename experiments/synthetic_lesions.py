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
latent scales (1x1, 2x2, 4x4), 2500 steps. Scale up with e.g.
`--config.num_train_steps=5000 --config.batch_size=32`.

Config argument (after `:`): one variant, optionally `,tiny`:
  hpunet          HPU-Net with GECO and top-k (default).
  spunet          standard Probabilistic U-Net, 6 global latents, ELBO.
  global_latents  HPU-Net topology, one 21-dim latent in the 1x1 bottom (as
                  many latents as the hierarchy), the hierarchy's kappa.
  local_latents   HPU-Net topology, only the finest (4x4) latent grid.
  no_topk         HPU-Net without the top-k reconstruction loss (kappa
                  per pixel of the whole image).
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
      # Long enough for GECO to end at its equilibrium (the multiplier's
      # comment below): at 1500 steps no run did; seeds 0-2 reach it by
      # steps 1850-2350.
      num_train_steps=2500,
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
    # config") reached 0.17 nats per top-k pixel (mean of its last three
    # logged steps); kappa = 0.25 lies about 1.5x above it. Measured with
    # this schedule (results/synthetic_lesions_v3_schedule/, validation
    # split, 2-core Intel Xeon): seeds 0, 1, 2 end at lambda 0.22 / 0.21 /
    # 0.27 with KL 8.8 / 8.9 / 9.0 nats (mean of the last 300 steps). A
    # kappa near the reconstruction GECO reaches at a large lambda (0.02-0.05
    # nats) is slower, not faster: at 0.1 (seed 0) lambda peaked at 79
    # instead of 24 and still fell at step 2000 (log lambda -0.67 over the
    # last 300 steps).
    kappa = 0.25
    if variant == 'no_topk':
      # The ablations get the converged hierarchy's reconstruction under
      # their own loss (docs/synthetic_study.md, "The ablations' kappa"):
      # every pixel in the loss, the three converged validation runs hold
      # 0.0049 / 0.0041 / 0.0042 nats per pixel. global_latents keeps 0.25,
      # far below the 0.65 met with no latent (the paper's x3, 0.75, was met
      # without using the latent: KL 0.01 nats).
      kappa = 0.0044
    # Lambda's own multiplicative update (Rezende & Viola 2018), not the
    # authors' v-in-Adam rule, under which lambda moves by about the
    # learning rate per step and stays in its rising phase for 10^4+ steps
    # (docs/synthetic_study.md, "GECO multiplier"). log lambda moves by
    # rate x C, C the moving-average constraint per pixel.
    # Rising (C > 0), rate 0.02: lambda peaks at 23.5 / 30.9 / 23.2 (seeds
    # 0 / 1 / 2) when the constraint is met (steps 800 / 850 / 750); 0.03
    # peaked at 82 (seed 1) and ended with lambda still rising, 0.1
    # overshot to 1.4e4.
    # Falling (C < 0), rate_down 0.1: once met, the reconstruction sits at
    # 0.02-0.05 nats per pixel (C about -0.2) until lambda is near its end
    # value, so at 0.02 lambda was still 1.5 at step 1500 and 0.08 at 3000
    # (C -0.10), and at 0.05 (seed 1) it fell until step 1800 and was
    # rising again over the last 300 steps (mean C +0.09). At 0.1 lambda
    # undershoots (minimum 0.13 / 0.032 / 0.021 at steps 1300 / 1400 /
    # 1400) and climbs back at 0.02; the convergence rule (config.convergence, last 300 steps) holds
    # from step 1850 / 2250 / 2350 on and at step 2500 all three seeds are
    # converged (mean C +0.005 / +0.008 / +0.000 per pixel within +-0.05;
    # log lambda moved -0.006 / +0.049 / -0.192, limit 0.3).
    config.loss = config_common.geco_loss(
        kappa=kappa,
        top_k_fraction=0.0 if variant == 'no_topk' else 0.02,
        geco_multiplier='multiplicative', geco_multiplier_rate=0.02,
        geco_multiplier_rate_down=0.1)
  # One drop, at step 1400: after lambda's fast fall and long before the
  # window the convergence rule judges. A drop during the fall (at 1400
  # with rate_down 0.05) froze the reconstruction's answer to lambda, which
  # fell on to 0.013 with C still -0.07 at step 2000; a drop at 2000 (80 %)
  # moved the equilibrium inside the window (seed 2: lambda flat at 0.28-0.29
  # over steps 2050-2200, then 0.17 at 2500, log lambda -0.47: not
  # converged). No gradient clipping (None), as in the paper.
  config.optimizer = config_common.adam(boundaries=(1400,),
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
