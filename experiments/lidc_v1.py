r"""LIDC-IDRI on the 128x128 release (LIDC v1: PHiSeg, SSN, MoSE, CCDM).

  python -m experiments.train --config=experiments/lidc_v1.py:hpunet \
      --workdir=/tmp/lidc_v1 --config.data.manual_dir=/path/to/pickle_dir \
      [--config.data.builder_config=hdf5_groups]

`manual_dir` holds `data_lidc.pickle` (builder config `pickle`, the default:
a seeded 60/20/20 split by series) or PHiSeg's `data_lidc.hdf5` (configs
`hdf5`, `hdf5_groups`); see `datasets/lidc_v1`. The paper's LIDC settings
(experiments/lidc.py) at 128x128 as stored: no 180 -> 128 crop, so the
augmentation's random translation has no room and only the warps remain.

Config argument (after `:`): one variant, optionally `,tiny`:
  hpunet  HPU-Net, 8 scales, 4 scalar latent scales (default).
  spunet  standard Probabilistic U-Net: 5 scales, 6 global latents, ELBO.
  tiny    (modifier) 32x32 crops, 8-channel 4-level model, batch 2, 4 steps,
          for CPU tests.
"""
import ml_collections

from experiments import config_common
from experiments import lidc

VARIANTS = ('hpunet', 'spunet')
NUM_STEPS = lidc.NUM_STEPS  # Paper: 240k iterations, every model.


def get_config(arg=None) -> ml_collections.ConfigDict:
  variant, tiny = config_common.parse_arg(arg, VARIANTS, default='hpunet')
  # The paper's LIDC model, loss, optimiser (no gradient clipping:
  # optimizer.clip_global_norm None) and evaluation, unchanged.
  config = lidc.get_config(variant + (',tiny' if tiny else ''))
  # 'pickle' (seeded series split), 'hdf5' or 'hdf5_groups'; see the builder.
  config.data = config_common.data_config('lidc_v1', builder_config='pickle')
  # config.image_size stays (128, 128), the stored size (tiny: 32x32 crops).
  return config
