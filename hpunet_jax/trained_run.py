"""A trained model from a training run's workdir, ready to sample.

```python
import hpunet_jax
run = hpunet_jax.load('/tmp/hpunet_lesions')          # newest checkpoint
labels = run.sample(image, num_samples=16, seed=0)    # int32 [16, H, W]
probs = run.probabilities(image, num_samples=16, seed=0)  # [16, H, W, K]
```

`image` is one `[H, W]` or `[H, W, C]` array of a numeric dtype, scaled as
the training pipeline scales that dtype (`hpunet_jax.images`); its size
must be the run's `config.image_size` unless `resize='crop'|'pad'` says how
to fit it. The same seed gives the same samples. Everything the trainer's
evaluation, `predict` and the studies load goes through `load`.

Orbax's INFO lines about the restore are dropped (`quiet_logs`); its
warnings and errors stay.
"""
import os
from typing import Any, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hpunet_jax import images
from hpunet_jax import models
from hpunet_jax.runtime import checkpointing
from hpunet_jax.runtime import quiet_logs
from hpunet_jax.runtime import xla_options

# sPU-Net fields that configs saved before they existed lack, with the values
# that reproduce the code that wrote them: orthogonal kernels and
# nearest-neighbour up-sampling.
SPUNET_LEGACY_FIELDS = {'weight_init': 'orthogonal', 'up_sampling': 'nearest'}


def fill_old_spunet_fields(config: ml_collections.ConfigDict,
                           source: str) -> None:
  """Adds `SPUNET_LEGACY_FIELDS` missing from an sPU-Net `config` (in
  place), with one log line naming `source` (the checkpoint)."""
  if config.get('model_type') != 'spunet':
    return
  missing = {key: value for key, value in SPUNET_LEGACY_FIELDS.items()
             if key not in config.model}
  if not missing:
    return
  logging.warning(
      '%s: the saved sPU-Net config predates model.%s; using %s, the code '
      'that wrote it.', source, ' and model.'.join(missing),
      ', '.join(f'{key}={value!r}' for key, value in missing.items()))
  with config.unlocked():
    config.model.update(missing)


def _check_num_samples(num_samples: int) -> int:
  if (isinstance(num_samples, bool)
      or not isinstance(num_samples, (int, np.integer)) or num_samples < 1):
    raise ValueError(f'num_samples must be a positive integer, got '
                     f'{num_samples!r}.')
  return int(num_samples)


class TrainedRun:
  """A run's config, model functions and parameters at one step.

  Attributes:
    config: the run's `ml_collections.ConfigDict` (as saved with it).
    model: `hpunet_jax.models.Model`, the pure functions.
    params: the model parameters (host arrays).
    step: the checkpoint's training step.
  """

  def __init__(self, config: ml_collections.ConfigDict, model: models.Model,
               params: Any, step: int):
    self.config = config
    self.model = model
    self.params = params
    self.step = int(step)
    self.image_size = images.model_size(config.image_size)
    self.num_channels = config.model.get('num_input_channels', None)
    # Configs saved before the option existed lack it: compile as they did.
    jit_kwargs = xla_options.jit_kwargs(config.get('xla_cpu_eigen_conv',
                                                   False))

    def labels_of(logits):
      return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def softmax_of(logits):
      return jax.nn.softmax(logits, axis=-1)

    def sample(params, rng, image, num_samples, reduce):
      return model.sample(params, rng, image, num_samples, per_sample=reduce)

    self._sample = jax.jit(sample, static_argnums=(3, 4), **jit_kwargs)
    self._labels_of, self._softmax_of = labels_of, softmax_of
    self._reconstruct = jax.jit(
        lambda params, image, seg: softmax_of(
            model.reconstruct(params, image, seg)), **jit_kwargs)

  def __repr__(self) -> str:
    return (f'TrainedRun({self.config.get("model_type")}, step {self.step}, '
            f'image_size {self.image_size})')

  def prepare(self, image: np.ndarray, resize: Optional[str] = None,
              name: str = 'image',
              resize_hint: str = "resize='{}'") -> images.FittedImage:
    """One image -> float32 `[height, width, C]` as the model sees it, and
    its valid (non-padding) pixels. `name` and `resize_hint` only shape the
    error messages (`images.fit_to_size`).

    Raises:
      ValueError: a dtype or value range the model was not trained with,
        another rank, channels that cannot be converted, or a size that
        `resize` does not fix (the message names the size needed).
    """
    image = np.asarray(image)
    channels = self.num_channels or (image.shape[-1] if image.ndim == 3
                                     else 1)
    image = images.to_channels(image, channels, name)
    fitted = images.fit_to_size(image, self.image_size, resize, name,
                                resize_hint)
    return images.FittedImage(images.image_to_float(fitted.image, name),
                              fitted.valid)

  def _draw(self, image, num_samples, seed, resize, reduce):
    num_samples = _check_num_samples(num_samples)
    fitted = self.prepare(image, resize)
    out = self._sample(self.params, jax.random.PRNGKey(seed),
                       fitted.image[None], num_samples, reduce)
    return np.asarray(out[:, 0])

  def sample(self, image: np.ndarray, num_samples: int = 16, seed: int = 0,
             resize: Optional[str] = None) -> np.ndarray:
    """`num_samples` segmentations of one image: int32 `[N, H, W]` class ids
    (encoder once, decoder per sample; H, W the model's size)."""
    return self._draw(image, num_samples, seed, resize, self._labels_of)

  def probabilities(self, image: np.ndarray, num_samples: int = 16,
                    seed: int = 0, resize: Optional[str] = None
                    ) -> np.ndarray:
    """Each sample's softmax: float32 `[N, H, W, K]`; its argmax is
    `sample(image, num_samples, seed, resize)`."""
    return self._draw(image, num_samples, seed, resize, self._softmax_of)

  def reconstruct(self, image: np.ndarray, segmentation: np.ndarray,
                  resize: Optional[str] = None) -> np.ndarray:
    """The softmax decoded from the posterior means given a segmentation,
    float32 `[H, W, K]` (how the paper measures IoU_rec).

    Args:
      image: as for `sample`.
      segmentation: int `[H, W]` class ids in `[0, K)`, fitted like the image.
      resize: as for `sample`.
    """
    fitted = self.prepare(image, resize)
    segmentation = np.asarray(segmentation)
    if segmentation.ndim != 2 or not np.issubdtype(segmentation.dtype,
                                                   np.integer):
      raise ValueError('segmentation must be integer class ids [H, W], got '
                       f'{segmentation.dtype} {segmentation.shape}.')
    segmentation = images.fit_to_size(segmentation, self.image_size, resize,
                                      'segmentation').image
    num_classes = self.config.model.num_classes
    if segmentation.min() < 0 or segmentation.max() >= num_classes:
      raise ValueError(f'segmentation ids must lie in [0, {num_classes}), '
                       f'got [{segmentation.min()}, {segmentation.max()}].')
    out = self._reconstruct(self.params, fitted.image[None],
                            segmentation[None].astype(np.int32))
    return np.asarray(out[0])


def load(workdir: str, step: Optional[int] = None,
         config: Optional[ml_collections.ConfigDict] = None) -> TrainedRun:
  """The trained model of a run's workdir, at its newest (or a given)
  checkpoint.

  Args:
    workdir: the training run's directory (holds `checkpoints/`).
    step: which checkpoint; None = the newest that reads (damaged ones are
      skipped with a warning and left in place).
    config: the run's config; None = the config saved with the checkpoint
      (an sPU-Net's saved before `model.weight_init` / `model.up_sampling`
      existed gets the values that wrote it, `fill_old_spunet_fields`).

  Raises:
    FileNotFoundError: no checkpoint in `<workdir>/checkpoints`.
    checkpointing.CheckpointError: every checkpoint is damaged, or the one
      asked for does not restore; `NonFiniteCheckpointError`: the checkpoint
      (the newest readable one, or `step`) holds NaN or infinite values.
  """
  quiet_logs.quiet_libraries()
  directory = os.path.abspath(os.path.join(workdir,
                                           checkpointing.CHECKPOINT_DIR))
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'No checkpoints in {directory}: train first, or '
                            'pass the workdir of a training run.')
  checkpointer = checkpointing.Checkpointer(directory, use_async=False)

  def restore(at_step):
    saved_config = (checkpointer.restore_config(at_step) if config is None
                    else None)
    return checkpointer.restore_trainable(at_step), saved_config

  try:
    if step is None:
      found = checkpointer.restore_newest(restore, move_unreadable=False)
      if found is None:
        raise FileNotFoundError(f'No complete checkpoint in {directory}.')
      step, (trainable, saved_config) = found
    else:
      if step not in checkpointer.all_steps():
        raise FileNotFoundError(
            f'No checkpoint of step {step} in {directory}; there are '
            f'{checkpointer.all_steps() or "none"}.')
      trainable, saved_config = restore(step)
    if config is None:
      config = ml_collections.ConfigDict(saved_config)
      fill_old_spunet_fields(config, os.path.join(directory, str(step)))
  finally:
    checkpointer.close()
  model = models.make_model(config.model_type, config.model.to_dict())
  return TrainedRun(config, model, trainable['model'], int(step))
