"""Pieces shared by the task configs in `experiments/<task>.py`.

Config argument scheme (the part after `:` in `--config=file.py:ARG`): a
comma-separated list of one model variant and optional modifiers, e.g.
`lidc.py:spunet`, `lidc.py:global_latents,tiny`, `lidc.py:tiny` (= the default
variant, tiny). Variants differ per task; the modifier `tiny` shrinks the model,
images, batch and step counts so that a few steps run in seconds on a CPU
(the tests use it).
"""
from typing import Optional, Sequence, Tuple

import ml_collections
import numpy as np

MODIFIERS = ('tiny',)


def parse_arg(arg: Optional[str], variants: Sequence[str],
              default: str) -> Tuple[str, bool]:
  """Splits `'variant,tiny'` into `(variant, tiny)`.

  Args:
    arg: the config argument (None or '' = `default`, not tiny).
    variants: the variants this task offers.
    default: the variant used when none is named.

  Returns:
    `(variant, tiny)`.

  Raises:
    ValueError: unknown or repeated words.
  """
  words = [w.strip() for w in (arg or '').split(',') if w.strip()]
  unknown = [w for w in words if w not in variants and w not in MODIFIERS]
  named_variants = [w for w in words if w in variants]
  if unknown or len(named_variants) > 1 or len(set(words)) != len(words):
    raise ValueError(
        f'config argument {arg!r}: expected one of the variants '
        f'{tuple(variants)} and optionally {MODIFIERS}, comma-separated.')
  return (named_variants[0] if named_variants else default), 'tiny' in words


def geometric_schedule(initial: float, final: float, num_drops: int,
                       num_steps: int) -> Tuple[Tuple[int, ...],
                                                Tuple[float, ...]]:
  """Piecewise-constant decay from `initial` to `final` in `num_drops` steps.

  The paper gives only the start and end rates and the number of drops
  ("lowered to 0.5e-5 in 4 steps over the course of 240k iterations"); we
  space the drops evenly over training and the rates geometrically.

  Returns:
    `(boundaries, learning_rates)` for the `optimizer` config.
  """
  boundaries = tuple(int(round(num_steps * (i + 1) / (num_drops + 1)))
                     for i in range(num_drops))
  values = tuple(float(v) for v in np.geomspace(initial, final, num_drops + 1))
  return boundaries, values


def doubling_channels(base: int, num_levels: int,
                      max_doublings: int = 3) -> Tuple[int, ...]:
  """Channels per level: doubled after each of the first `max_doublings`
  down-samplings, then constant (paper Appx. D: "until the fourth
  down-sampling the number of channels is doubled", e.g. 24 -> 192)."""
  return tuple(base * 2**min(level, max_doublings)
               for level in range(num_levels))


def base_config(*, image_size: Tuple[int, int], batch_size: int,
                num_train_steps: int, log_every_steps: int,
                checkpoint_every_steps: int) -> ml_collections.ConfigDict:
  """The run-level keys every task config has."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # Seeds parameter init, data order and all training noise.
  config.image_size = tuple(image_size)  # (H, W) the model sees (augmented).
  config.batch_size = batch_size  # Global batch, all devices and processes.
  config.num_train_steps = num_train_steps  # Total optimiser steps.
  # Progress line, metrics.jsonl and TensorBoard every this many steps.
  config.log_every_steps = log_every_steps
  # Checkpoint every this many steps; also at the end and on SIGTERM.
  config.checkpoint_every_steps = checkpoint_every_steps
  config.checkpoints_to_keep = 2  # Most recent checkpoints kept on disk.
  # (data, spatial) device mesh: batch split over `data`, image height over
  # `spatial`. (-1, 1) = every device on the batch.
  config.mesh_shape = (-1, 1)
  # Persistent XLA compilation cache; '' = $HPUNET_JAX_CACHE, else
  # ~/.cache/hpunet_jax/jax (hpunet_jax/runtime/compilation_cache.py).
  config.compilation_cache_dir = ''
  # On CPU, compile the train step and the evaluator's sampling with
  # convolutions on XLA's Eigen kernels (hpunet_jax/runtime/xla_options.py): 27 %
  # faster at 128x128, neutral at 64x64. Ignored where unsupported.
  config.xla_cpu_eigen_conv = True
  # Dtype the networks compute in (hpunet_jax/precision.py): 'float32', or
  # 'bfloat16' for convolutions and activations in bf16 (TPU/GPU) with float32
  # parameters, optimiser state, KL and loss.
  config.compute_dtype = 'float32'
  # Precision of convolutions and matmuls: 'default' (XLA's; on TPU float32
  # convolutions then use bf16 passes), 'high' or 'highest' (full float32).
  config.conv_precision = 'default'
  # How a finished run is judged converged (experiments/convergence.py): it
  # changes no training, only the `converged` verdict recorded with the run.
  config.convergence = ml_collections.ConfigDict(dict(
      window_steps=300,  # The last this many steps are judged.
      # GECO: the mean moving-average constraint per pixel within this
      # fraction of kappa of 0 ...
      constraint_band=0.2,
      # ... and log lambda moved at most this much over the window.
      max_log_lambda_drift=0.3,
      # ELBO: the held-out loss of the last checkpoint within this fraction
      # of the previous kept checkpoint's (needs checkpoints_to_keep >= 2) ...
      loss_plateau_tolerance=0.02,
      # ... both scored on the same this many images of this split.
      heldout_examples=128,
      heldout_split='validation',
      # A step whose per-pixel reconstruction loss exceeds this many times
      # its moving average is counted as a spike (spikes.jsonl).
      spike_factor=3.0,
  ))
  # The task file sets the rest: model_type ('hpunet' | 'spunet'), model
  # (kwargs of the model class), loss, optimizer, data (datasets.pipeline),
  # augment (kwargs of datasets.augment.augment_batch) and eval.
  return config


def hpunet_model(channels_per_level: Sequence[int],
                 latent_dims: Sequence[int], num_classes: int,
                 blocks_per_level: int, convs_per_block: int,
                 num_input_channels: int,
                 num_prior_only_channels: int = 0
                 ) -> ml_collections.ConfigDict:
  """Kwargs of `hpunet_jax.hpunet.HierarchicalProbUNet`."""
  return ml_collections.ConfigDict(dict(
      # Feature maps per resolution level, finest first; the number of
      # entries is the number of levels (down-samplings + 1).
      channels_per_level=tuple(channels_per_level),
      # Latent channels per latent level, coarsest first. (1, 1, 1, 1): four
      # scalar latent grids; (85,): one global latent vector; (0, 0, 0, 1):
      # only the finest grid.
      latent_dims=tuple(latent_dims),
      num_classes=num_classes,  # Output classes K.
      blocks_per_level=blocks_per_level,  # Res-blocks per level.
      convs_per_block=convs_per_block,  # 3x3 convs in each res-block.
      num_input_channels=num_input_channels,  # Image channels (checked).
      # The last this-many input channels go to the prior only (the visible
      # labels of the extrapolation task); counted in num_input_channels.
      num_prior_only_channels=num_prior_only_channels,
  ))


def spunet_model(channels_per_level: Sequence[int], convs_per_level: int,
                 latent_dim: int, num_classes: int, num_comb_convs: int,
                 num_input_channels: int, weight_init: str = 'he_normal',
                 up_sampling: str = 'bilinear') -> ml_collections.ConfigDict:
  """Kwargs of `hpunet_jax.spunet.ProbUNet` (the sPU-Net baseline)."""
  return ml_collections.ConfigDict(dict(
      channels_per_level=tuple(channels_per_level),  # Finest first.
      convs_per_level=convs_per_level,  # 3x3 conv+ReLU per U-Net scale.
      latent_dim=latent_dim,  # Size of the global latent vector.
      num_classes=num_classes,  # Output classes K.
      num_comb_convs=num_comb_convs,  # 1x1 convs of f_comb incl. logits.
      num_input_channels=num_input_channels,  # Image channels (checked).
      # Kernel init: 'he_normal' (the original sPU-Net code) or
      # 'orthogonal' (the HPU-Net's; the ReLU stack then starts near zero).
      weight_init=weight_init,
      # U-Net decoder up-sampling: 'bilinear' (original code, aligned
      # corners) or 'nearest' (the HPU-Net's).
      up_sampling=up_sampling,
  ))


def geco_loss(kappa: float, top_k_fraction: float = 0.02,
              weight_decay: float = 1e-5, geco_multiplier: str = 'adam',
              geco_multiplier_rate: float = 0.0,
              geco_multiplier_rate_down: Optional[float] = None
              ) -> ml_collections.ConfigDict:
  """`loss_config` of `hpunet_jax.objective.loss_fn` for GECO (HPU-Net)."""
  return ml_collections.ConfigDict(dict(
      objective='geco',  # 'geco' or 'elbo'.
      beta=1.0,  # KL weight (ELBO only).
      kappa=kappa,  # Reconstruction target per pixel (GECO only).
      geco_decay=0.99,  # Moving-average decay of the constraint.
      geco_rate=1e-2,  # Gradient scale of the Lagrange parameter ('adam').
      # Lambda's update: 'adam' (authors' code: v in the weights' Adam) or
      # 'multiplicative' (lambda *= exp(rate * C per pixel), Rezende & Viola
      # 2018; a deviation that lets lambda move within short runs).
      geco_multiplier=geco_multiplier,
      geco_multiplier_rate=geco_multiplier_rate,  # 'multiplicative' only.
      # Its rate while the constraint holds (lambda falling); None = the
      # same rate.
      geco_multiplier_rate_down=ml_collections.FieldReference(
          geco_multiplier_rate_down, field_type=float),
      top_k_fraction=top_k_fraction,  # Fraction of pixels in the loss; 0=all.
      deterministic_top_k=False,  # True: k largest losses, no Gumbel noise.
      weight_decay=weight_decay,  # L2 factor on the weights (paper: 1e-5).
  ))


def elbo_loss(beta: float = 1.0,
              weight_decay: float = 1e-5) -> ml_collections.ConfigDict:
  """`loss_config` for the ELBO (sPU-Net: beta = 1, no top-k)."""
  config = geco_loss(kappa=0.0, top_k_fraction=0.0, weight_decay=weight_decay)
  config.objective = 'elbo'
  config.beta = beta
  return config


def adam(boundaries: Sequence[int], learning_rates: Sequence[float],
         clip_global_norm: Optional[float] = None
         ) -> ml_collections.ConfigDict:
  """Adam with a piecewise-constant learning rate, after optional
  global-norm gradient clipping."""
  return ml_collections.ConfigDict(dict(
      # Steps at which the learning rate changes (increasing).
      boundaries=tuple(int(b) for b in boundaries),
      # len(boundaries) + 1 rates: learning_rates[i] until boundaries[i].
      learning_rates=tuple(float(v) for v in learning_rates),
      b1=0.9,  # Adam first-moment decay.
      b2=0.999,  # Adam second-moment decay.
      eps=1e-8,  # Adam epsilon.
      # Scale the gradients down to this global norm (over all trainable
      # parameters, as the logged grad_norm) before Adam; None = no
      # clipping, as in the paper (docs/training_failures.md).
      clip_global_norm=ml_collections.FieldReference(
          clip_global_norm, field_type=float),
  ))


def make_tiny(config: ml_collections.ConfigDict) -> None:
  """Shrinks steps and batch for CPU smoke tests (in place).

  The task file shrinks the model, images and data on top of this.
  """
  config.batch_size = 2
  config.num_train_steps = 4
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.convergence.heldout_examples = 4  # Two held-out batches.
  config.optimizer = adam(boundaries=(2,), learning_rates=(1e-3, 5e-4))
  config.eval.num_samples = 0  # No final evaluation.


def data_config(name: str, builder_config: Optional[str],
                train_split: str = 'train') -> ml_collections.ConfigDict:
  """`config.data` for `datasets.pipeline` (task options added by the task)."""
  config = ml_collections.ConfigDict()
  config.name = name  # Folder of datasets/ holding the TFDS builder.
  config.builder_config = (  # TFDS builder config; None = its default.
      builder_config if builder_config is not None
      else ml_collections.config_dict.placeholder(str))
  # TFDS data directory; None = $TFDS_DATA_DIR or ~/tensorflow_datasets.
  config.data_dir = ml_collections.config_dict.placeholder(str)
  # Raw files of a real data set (built into data_dir on first use).
  config.manual_dir = ml_collections.config_dict.placeholder(str)
  config.train_split = train_split  # Split the trainer reads.
  config.worker_count = 0  # grain worker processes; 0 = in-process.
  return config


def augment_config(crop_size, *, rotation_degrees: float = 0.0,
                   scale_range: Tuple[float, float] = (1.0, 1.0),
                   shear: float = 0.0, elastic_sigma: float = 8.0,
                   elastic_alpha: float = 0.0, flip: bool = False,
                   flip_vertical: bool = False,
                   colour_jitter: float = 0.0) -> ml_collections.ConfigDict:
  """Kwargs of `datasets.augment.augment_batch`, every one spelled out."""
  return ml_collections.ConfigDict(dict(
      crop_size=crop_size,  # Output (H, W); a reference to config.image_size.
      rotation_degrees=rotation_degrees,  # Uniform in +- this.
      scale_range=scale_range,  # (low, high) zoom, log-uniform.
      shear=shear,  # Shear angle in degrees, uniform in +- this.
      elastic_sigma=elastic_sigma,  # Smoothness of the elastic field (px).
      elastic_alpha=elastic_alpha,  # RMS elastic displacement (px); 0 = off.
      flip=flip,  # Mirror left-right with probability 1/2.
      flip_vertical=flip_vertical,  # Mirror top-bottom with probability 1/2.
      colour_jitter=colour_jitter,  # Brightness/contrast/saturation strength.
  ))


def masking_config(num_classes, *, mode: str = 'line',
                   min_fraction: float = 0.25, max_fraction: float = 0.75,
                   num_boxes: int = 1) -> ml_collections.ConfigDict:
  """`config.masking`: kwargs of `datasets.masking.extrapolation_mask`.

  Setting it turns on the extrapolation task (paper Sec. 3.3): the trainer
  hides part of each augmented image and feeds the visible ground truth to
  the prior; the model then needs `num_input_channels = C + K + 1` and
  `num_prior_only_channels = K + 1`.
  """
  return ml_collections.ConfigDict(dict(
      # 'line' (hide all above a random row), 'boxes' or 'both'.
      mode=mode,
      # Hidden fraction of the rows (line) / of a box's sides, uniform in
      # [min_fraction, max_fraction]. The paper gives no range.
      min_fraction=min_fraction,
      max_fraction=max_fraction,
      num_boxes=num_boxes,  # Boxes per image ('boxes', 'both').
      num_classes=num_classes,  # K of the one-hot labels (= model classes).
  ))


def eval_config(num_samples: int, *, cluster_alpha: int = 16,
                cluster_no_neighbour: str = 'keep',
                split: str = 'test') -> ml_collections.ConfigDict:
  """`config.eval`, read by `eval.evaluator` (final summary, run_metrics)."""
  return ml_collections.ConfigDict(dict(
      split=split,  # Split the final evaluation runs on.
      num_samples=num_samples,  # Largest sample count per image; 0 = skip.
      batch_size=8,  # Images per evaluation batch.
      num_resamples=1000,  # Bootstrap resamples for the +- std.
      # Evaluate only the first N images; None = the whole split.
      num_examples=ml_collections.config_dict.placeholder(int),
      num_figure_examples=4,  # Images shown in the figures.
      cluster_alpha=cluster_alpha,  # Hamming threshold of the clustering.
      # Instance clustering: what an eroded-away pixel with no valid
      # neighbour becomes ('keep' its id, or 'background').
      cluster_no_neighbour=cluster_no_neighbour,
      # Lesion tasks' protocol (eval.task_scores.LesionProtocol;
      # docs/lidc_protocols.md). GED^2 and diversity are
      # reported at few_samples and at num_samples, HM-IoU at few_samples.
      few_samples=16,  # The HPU-Net paper's 16.
      # HM-IoU matching: 'lcm' (both sets duplicated to their least common
      # multiple, HPU-Net paper) or 'repeat_gt' (ground truths repeated
      # N / M times, MoSE / CAR; needs M | N, and then gives the same value).
      hm_iou_convention='lcm',
      # GED^2 / diversity within-set means over all N^2 pairs (True, as all
      # published code) or only the N (N - 1) pairs i != j (False).
      ged_self_pairs=True,
      # Lesion ECE: 'sample_fraction' (per image, the fraction of samples
      # marking a pixel vs the graders' mean), 'mose' (mean foreground
      # softmax, bins (lo, hi], pooled over the test set) or 'ssn' (per
      # image, mean of both classes' ECEs of the mean softmax).
      ece_convention='sample_fraction',
  ))
