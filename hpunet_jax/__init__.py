"""hpunet_jax: the Hierarchical Probabilistic U-Net in JAX/Haiku.

Use a trained model:

```python
import hpunet_jax
run = hpunet_jax.load('/tmp/hpunet_lesions')        # newest checkpoint
labels = run.sample(image, num_samples=16, seed=0)  # int32 [16, H, W]
```

Modules map onto the paper (Kohl et al. 2019):
- `blocks`: pre-activated res-block, resampling, initialisers (Appx. D).
- `hierarchical_core`: encoder + truncated decoder with latent grids (Eq. 1-4).
- `hpunet`: prior U-Net, posterior core, stitching decoder (Fig. 1).
- `spunet`: the standard Probabilistic U-Net baseline.
- `losses`: KL (Eq. 12), top-k cross-entropy, ELBO (Eq. 5), GECO (Eq. 6).
- `objective`: the training loss the trainer differentiates.
- `models`: `make_model`, the pure functions incl. encoder-once sampling.
- `images`: how pixels are scaled for the model, in training and in use.
- `trained_run`: `load` and `TrainedRun` (sample, probabilities,
  reconstruct).
"""
import importlib

__all__ = ['load', 'TrainedRun']
__version__ = '0.1.0'


def __getattr__(name):
  # `load` pulls in Orbax; `import hpunet_jax.models` alone should not.
  if name in __all__:
    return getattr(importlib.import_module('hpunet_jax.trained_run'), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
