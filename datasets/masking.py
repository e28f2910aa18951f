"""Masked inputs for the extrapolation task (paper Sec. 3.3, Fig. 5).

The model learns to complete a segmentation inside a blacked-out part of the
image from the visible part. `extrapolation_mask` runs on the device after
augmentation (inside the jitted train step; the evaluator calls
`mask_example` with fixed keys). Per example it draws a region to hide:

- 'line': every row above a random horizontal line; the hidden fraction of
  the rows is uniform in `[min_fraction, max_fraction]`.
- 'boxes': the union of `num_boxes` axis-aligned boxes whose height and width
  are uniform fractions in `[min_fraction, max_fraction]` of the image's,
  placed uniformly inside the image.
- 'both': the union of the two.

The hidden image pixels are set to 0, and the paper's visualisation set-up is
appended as channels for the prior only ("we feed in both the image and the
ground-truth segmentation of the unmasked region to the prior, so that it can
fix the found instance ids"): the one-hot ground truth where it is visible and
valid (zeros elsewhere) and the visibility map. The targets (`segmentation`)
and the loss mask (`mask`) stay untouched, so the loss covers the whole image;
the model needs `num_input_channels = C + K + 1` and
`num_prior_only_channels = K + 1` (`num_prior_only_channels(K)`).

Shape glossary: `B` batch, `H, W` image size, `C` image channels, `K` classes.
"""
from collections.abc import Mapping

import jax
import jax.numpy as jnp

MODES = ('line', 'boxes', 'both')


def num_prior_only_channels(num_classes: int) -> int:
  """Channels appended for the prior: K one-hot labels + 1 visibility map."""
  return num_classes + 1


def check_model_kwargs(masking_config: Mapping,
                       model_kwargs: Mapping) -> None:
  """Raises ValueError unless the model splits off exactly the channels the
  masking appends (`num_prior_only_channels = K + 1`, same K).

  Args:
    masking_config: kwargs of `extrapolation_mask` (`config.masking`).
    model_kwargs: the model's constructor kwargs (`config.model`).
  """
  num_classes = masking_config['num_classes']
  if num_classes != model_kwargs['num_classes']:
    raise ValueError(f'config.masking.num_classes is {num_classes} but the '
                     f'model has {model_kwargs["num_classes"]} classes.')
  expected = num_prior_only_channels(num_classes)
  prior_only = model_kwargs.get('num_prior_only_channels', None)
  if prior_only != expected:
    raise ValueError(
        f'config.masking appends {expected} prior-only channels (one-hot '
        'labels + visibility), so the model needs num_prior_only_channels='
        f'{expected} (an HPU-Net option), got {prior_only}.')


def _check_options(mode: str, min_fraction: float, max_fraction: float,
                   num_boxes: int, num_classes: int) -> None:
  if mode not in MODES:
    raise ValueError(f'masking mode must be one of {MODES}, got {mode!r}')
  if not 0.0 <= min_fraction <= max_fraction <= 1.0:
    raise ValueError('masking needs 0 <= min_fraction <= max_fraction <= 1, '
                     f'got min_fraction={min_fraction}, '
                     f'max_fraction={max_fraction}')
  if mode != 'line' and int(num_boxes) < 1:
    raise ValueError(f'masking mode {mode!r} needs num_boxes >= 1, got '
                     f'{num_boxes}')
  if int(num_classes) < 1:
    raise ValueError(f'masking num_classes must be >= 1, got {num_classes}')


def visibility_map(rng: jax.Array, shape: tuple[int, int], *, mode: str,
                   min_fraction: float, max_fraction: float,
                   num_boxes: int) -> jax.Array:
  """One random region to hide: float32 `[H, W]`, 1 = visible, 0 = hidden.

  Args:
    rng: PRNG key.
    shape: (H, W).
    mode: 'line', 'boxes' or 'both' (see the module docstring).
    min_fraction: smallest hidden fraction of the rows ('line') and of a
      box's height and width ('boxes').
    max_fraction: largest such fraction.
    num_boxes: boxes per image ('boxes', 'both').
  """
  height, width = shape
  line_key, box_key = jax.random.split(rng)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  hidden = jnp.zeros(shape, bool)
  if mode in ('line', 'both'):
    fraction = jax.random.uniform(line_key, (), minval=min_fraction,
                                  maxval=max_fraction)
    hidden |= rows < jnp.round(fraction * height)
  if mode in ('boxes', 'both'):
    keys = jax.random.split(box_key, 4)
    size_fractions = jax.random.uniform(
        keys[0], (num_boxes, 2), minval=min_fraction, maxval=max_fraction)
    sizes = jnp.round(size_fractions * jnp.array([height, width])).astype(
        jnp.int32)
    # Integer corner, uniform over the positions that keep the box inside.
    tops = jax.random.randint(keys[1], (num_boxes,), 0,
                              height - sizes[:, 0] + 1)
    lefts = jax.random.randint(keys[2], (num_boxes,), 0,
                               width - sizes[:, 1] + 1)
    in_box = ((rows[None] >= tops[:, None, None]) &
              (rows[None] < (tops + sizes[:, 0])[:, None, None]) &
              (cols[None] >= lefts[:, None, None]) &
              (cols[None] < (lefts + sizes[:, 1])[:, None, None]))
    hidden |= jnp.any(in_box, axis=0)
  return jnp.where(hidden, 0.0, 1.0).astype(jnp.float32)


def mask_example(rng: jax.Array, example: Mapping[str, jax.Array], *,
                 mode: str, min_fraction: float, max_fraction: float,
                 num_boxes: int, num_classes: int) -> dict[str, jax.Array]:
  """`extrapolation_mask` for one example (`image` `[H, W, C]`, maps
  `[H, W]`): `image` becomes `[H, W, C + K + 1]`, `visible` `[H, W]` is
  added, every other key is returned unchanged."""
  _check_options(mode, min_fraction, max_fraction, num_boxes, num_classes)
  for key in ('image', 'segmentation', 'mask'):
    if key not in example:
      raise ValueError(f'extrapolation masking needs example[{key!r}]; got '
                       f'keys {sorted(example)}')
  image = example['image']
  if image.ndim != 3 or example['segmentation'].shape != image.shape[:2]:
    raise ValueError(
        f'extrapolation masking needs image [H, W, C] and segmentation '
        f'[H, W], got shapes {image.shape} and '
        f'{example["segmentation"].shape}')
  visible = visibility_map(rng, image.shape[:2], mode=mode,
                           min_fraction=min_fraction,
                           max_fraction=max_fraction, num_boxes=num_boxes)
  # Labels are given only where they are visible and enter the loss (no
  # labels from padding or ignore pixels).
  known = (visible * (example['mask'] > 0)).astype(image.dtype)
  one_hot = jax.nn.one_hot(example['segmentation'], num_classes,
                           dtype=image.dtype)
  out = dict(example)
  out['image'] = jnp.concatenate(
      [image * visible[..., None].astype(image.dtype),
       one_hot * known[..., None], visible[..., None].astype(image.dtype)],
      axis=-1)
  out['visible'] = visible
  return out


def extrapolation_mask(rng: jax.Array, batch: Mapping[str, jax.Array], *,
                       mode: str, min_fraction: float, max_fraction: float,
                       num_boxes: int,
                       num_classes: int) -> dict[str, jax.Array]:
  """Hides a random region of each image; one independent draw per example.

  Args:
    rng: PRNG key.
    batch: `image` float `[B, H, W, C]`, `segmentation` int `[B, H, W]` in
      `[0, K)`, `mask` float `[B, H, W]` (1 = valid), other keys passed on.
    mode: 'line', 'boxes' or 'both' (see the module docstring).
    min_fraction: smallest hidden fraction of the rows ('line') and of a
      box's height and width ('boxes').
    max_fraction: largest such fraction.
    num_boxes: boxes per image ('boxes', 'both').
    num_classes: K, the length of the one-hot labels.

  Returns:
    The batch with `image` float `[B, H, W, C + K + 1]` = (image with the
    hidden pixels 0, one-hot visible labels, visibility map) and `visible`
    float32 `[B, H, W]` (1 = visible); `segmentation` and `mask` unchanged.
  """
  if 'image' not in batch or batch['image'].ndim != 4:
    raise ValueError('extrapolation_mask needs batch["image"] [B, H, W, C]; '
                     f'got keys {sorted(batch)}')
  keys = jax.random.split(rng, batch['image'].shape[0])
  one = lambda key, example: mask_example(
      key, example, mode=mode, min_fraction=min_fraction,
      max_fraction=max_fraction, num_boxes=num_boxes, num_classes=num_classes)
  return jax.vmap(one)(keys, dict(batch))
