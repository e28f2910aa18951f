"""hpunet_jax: the Hierarchical Probabilistic U-Net in JAX/Haiku.

Modules map onto the paper (Kohl et al. 2019):
- `blocks`: pre-activated res-block, resampling, initialisers (Appx. D).
- `hierarchical_core`: encoder + truncated decoder with latent grids (Eq. 1-4).
- `hpunet`: prior U-Net, posterior core, stitching decoder (Fig. 1).
- `spunet`: the standard Probabilistic U-Net baseline.
- `losses`: KL (Eq. 12), top-k cross-entropy, ELBO (Eq. 5), GECO (Eq. 6).
- `objective`: the training loss the trainer differentiates.
- `models`: `make_model`, the pure functions incl. encoder-once sampling.
"""
