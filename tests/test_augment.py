"""Tests of the on-device augmentation."""
import functools

import jax
import numpy as np
import pytest

from datasets import augment


def _augment(batch, seed=0, **kwargs):
  fn = jax.jit(functools.partial(augment.augment_batch, **kwargs))
  return jax.tree.map(np.asarray, fn(jax.random.PRNGKey(seed), batch))


def _blocky_batch(batch_size=4, size=32, block=8, seed=0):
  """Binary block labels; the image holds the same map as a float channel."""
  rng = np.random.default_rng(seed)
  coarse = rng.integers(0, 2, (batch_size, size // block, size // block))
  labels = np.kron(coarse, np.ones((block, block), np.int64)).astype(np.int32)
  noise = rng.random((batch_size, size, size)).astype(np.float32)
  return {'image': np.stack([labels.astype(np.float32), noise], axis=-1),
          'segmentation': labels,
          'mask': np.ones((batch_size, size, size), np.float32)}


_STRONG = dict(crop_size=24, rotation_degrees=30, scale_range=(0.8, 1.25),
               shear=10, elastic_alpha=1.5, elastic_sigma=4.0, flip=True,
               flip_vertical=True)


def test_identity_parameters_return_the_input_exactly():
  batch = _blocky_batch()
  batch['mask'][:, :3] = 0  # An ignore region must survive as is.
  for kwargs in ({}, {'crop_size': 32}):
    out = _augment(batch, **kwargs)
    assert out.keys() == batch.keys()
    for key in batch:
      assert out[key].dtype == batch[key].dtype
      np.testing.assert_array_equal(out[key], batch[key], err_msg=key)


def test_image_and_labels_stay_aligned_under_a_random_warp():
  batch = _blocky_batch(batch_size=4)
  out = _augment(batch, **_STRONG)
  valid = out['mask'] > 0
  assert valid.mean() > 0.5
  warped_as_image = np.round(out['image'][..., 0])
  mismatch = np.mean(warped_as_image[valid] != out['segmentation'][valid])
  # Bilinear vs nearest differ only at a few block corners.
  assert mismatch < 0.03
  # A different draw (seed) puts the labels elsewhere: the check can fail.
  other = _augment(batch, seed=1, **_STRONG)
  both = valid & (other['mask'] > 0)
  assert np.mean(warped_as_image[both] != other['segmentation'][both]) > 0.2
  # Every example got its own warp.
  assert not np.array_equal(out['mask'][0], out['mask'][1])


def test_mask_marks_padding_after_zoom_out_and_rotation():
  batch = _blocky_batch(batch_size=8, size=32)
  out = _augment(batch, scale_range=(0.5, 0.5))
  # Content at half size: only the central ~16x16 source window is inside.
  assert 0.2 < out['mask'].mean() < 0.3
  assert (out['mask'][:, 15:17, 15:17] == 1).all()
  assert (out['mask'][:, :6] == 0).all() and (out['mask'][:, :, -6:] == 0).all()
  assert (out['image'][out['mask'] == 0] == 0).all()
  assert (out['segmentation'][out['mask'] == 0] == 0).all()
  rotated = _augment(batch, seed=3, rotation_degrees=45)
  corners = rotated['mask'][:, [0, 0, -1, -1], [0, -1, 0, -1]]
  assert (corners == 0).all()
  assert (rotated['mask'][:, 15:17, 15:17] == 1).all()


def test_translated_crop_larger_than_input_pads_with_mask_zero():
  batch = _blocky_batch(batch_size=4, size=16, block=4)
  out = _augment(batch, crop_size=(20, 24))
  assert out['image'].shape == (4, 20, 24, 2)
  # A pure translation by whole pixels moves every input pixel once.
  np.testing.assert_array_equal(out['mask'].sum(axis=(1, 2)), 16 * 16)
  np.testing.assert_allclose(out['image'].sum(axis=(1, 2)),
                             batch['image'].sum(axis=(1, 2)), rtol=1e-6)


def test_crop_is_a_window_of_the_input():
  batch = _blocky_batch(batch_size=3, size=32)
  out = _augment(batch, crop_size=(24, 20))
  assert out['image'].shape == (3, 24, 20, 2)
  assert out['segmentation'].shape == (3, 24, 20)
  assert out['mask'].shape == (3, 24, 20)
  offsets = set()
  for b in range(3):
    noise = batch['image'][b, :, :, 1]
    found = [(top, left) for top in range(9) for left in range(13)
             if np.array_equal(noise[top:top + 24, left:left + 20],
                               out['image'][b, :, :, 1])]
    assert len(found) == 1
    top, left = found[0]
    np.testing.assert_array_equal(
        out['segmentation'][b],
        batch['segmentation'][b, top:top + 24, left:left + 20])
    offsets.add(found[0])
  assert len(offsets) > 1  # The position is random per example.


def test_flip_moves_ignore_pixels_with_the_labels():
  batch = _blocky_batch(batch_size=8, size=16, block=4)
  batch['mask'][:, :, :3] = 0  # Ignore the three left columns.
  out = _augment(batch, flip=True)
  for b in range(8):
    flipped = np.array_equal(out['segmentation'][b],
                             batch['segmentation'][b, :, ::-1])
    reference = {k: v[b, :, ::-1] if flipped else v[b]
                 for k, v in batch.items()}
    for key in batch:
      np.testing.assert_array_equal(out[key][b], reference[key])


def test_colour_jitter_changes_only_the_image():
  rng = np.random.default_rng(0)
  batch = {'image': rng.uniform(0.2, 0.8, (4, 16, 16, 3)).astype(np.float32),
           'segmentation': rng.integers(0, 3, (4, 16, 16)).astype(np.int32),
           'mask': np.ones((4, 16, 16), np.float32)}
  out = _augment(batch, colour_jitter=(0.2, 0.3, 0.5))
  assert not np.allclose(out['image'], batch['image'])
  assert out['image'].min() >= 0 and out['image'].max() <= 1
  np.testing.assert_array_equal(out['segmentation'], batch['segmentation'])
  np.testing.assert_array_equal(out['mask'], batch['mask'])


def test_elastic_displacement_has_requested_rms():
  field = np.asarray(augment.elastic_displacement(
      jax.random.PRNGKey(0), (64, 64), sigma=3.0, alpha=2.0))
  assert field.shape == (2, 64, 64)
  assert 1.4 < field.std() < 2.6
  # Smooth: neighbouring displacements are strongly correlated.
  neighbours = np.corrcoef(field[0, :, :-1].ravel(), field[0, :, 1:].ravel())
  assert neighbours[0, 1] > 0.9


def test_bad_arguments_raise():
  batch = _blocky_batch(batch_size=1, size=16, block=4)
  with pytest.raises(ValueError, match='mask'):
    augment.augment_batch(jax.random.PRNGKey(0),
                          {'image': batch['image']})
  with pytest.raises(ValueError, match='scale_range'):
    augment.augment_batch(jax.random.PRNGKey(0), batch, scale_range=(2, 1))
  with pytest.raises(ValueError, match='segmentation'):
    cut = dict(batch, segmentation=batch['segmentation'][:, :8])
    augment.augment_batch(jax.random.PRNGKey(0), cut)
