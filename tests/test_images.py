"""`hpunet_jax.images`: dtype scaling, channels and fitting to the model."""
import numpy as np
import pytest

from hpunet_jax import images


# --- Scaling by dtype. ---


def test_unsigned_integers_are_divided_by_their_maximum():
  eight = images.image_to_float(np.array([0, 51, 255], np.uint8))
  np.testing.assert_array_equal(eight, np.float32([0, 0.2, 1]))
  scaled = images.image_to_float(np.array([0, 13107, 65535], np.uint16))
  assert scaled.dtype == np.float32
  np.testing.assert_allclose(scaled, [0, 0.2, 1], rtol=1e-7)
  # The same picture stored in 8 and in 16 bits gives the same input.
  levels = np.arange(0, 256, 17, dtype=np.uint8)
  np.testing.assert_allclose(images.image_to_float(levels),
                             images.image_to_float(levels.astype(np.uint16)
                                                   * 257), rtol=1e-6)
  np.testing.assert_array_equal(
      images.image_to_float(np.array([True, False])), [1, 0])


def test_floats_pass_in_unit_range_and_are_refused_outside():
  floats = np.array([0.0, 0.25, 1.0], np.float64)
  out = images.image_to_float(floats)
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, floats)
  with pytest.raises(ValueError, match=r'scan is float32 with values in '
                     r'\[-1000, 3000\].*\[0, 1\]'):
    images.image_to_float(np.array([-1000, 3000], np.float32), 'scan')
  with pytest.raises(ValueError, match='scan has non-finite pixels'):
    images.image_to_float(np.array([0.5, np.nan], np.float32), 'scan')


def test_signed_integers_are_refused_with_the_way_out():
  with pytest.raises(ValueError, match=r'ct is int16: signed.*\[0, 1\]'):
    images.image_to_float(np.array([-1024, 400], np.int16), 'ct')
  with pytest.raises(ValueError, match='not a numeric image'):
    images.image_to_float(np.array(['a']))


# --- Channels. ---


def test_channel_conversion():
  colour = np.array([[[255, 0, 0], [0, 0, 255]]], np.uint8)  # [1, 2, 3]
  grey = images.to_channels(colour, 1)
  np.testing.assert_array_equal(grey[..., 0], [[76, 29]])  # 0.299, 0.114.
  assert grey.dtype == np.uint8
  np.testing.assert_array_equal(images.to_channels(grey, 3),
                                np.repeat(grey, 3, axis=-1))
  np.testing.assert_array_equal(images.to_channels(grey[..., 0], 1), grey)
  deep = images.to_channels(colour.astype(np.uint16) * 257, 1)
  assert deep.dtype == np.uint16
  # 65535 * (0.299, 0.114), rounded.
  np.testing.assert_array_equal(deep[..., 0], [[19595, 7471]])
  with pytest.raises(ValueError, match="image's 3 channels to the model's 4"):
    images.to_channels(colour, 4)
  with pytest.raises(ValueError, match=r'\[H, W\] or \[H, W, C\].*\(1, 2, 3, 1\)'):
    images.to_channels(colour[..., None], 1)


# --- Fitting to the model's size. ---


def test_fit_exact_size_and_wrong_size_error():
  image = np.ones((4, 6, 1), np.float32)
  fitted, valid = images.fit_to_size(image, (4, 6), None)
  assert fitted is image and valid.all()
  with pytest.raises(ValueError, match=r"scan.png is 4x6.*8x8.*resize='crop'"
                     r".*resize='pad'"):
    images.fit_to_size(image, (8, 8), None, name='scan.png')
  with pytest.raises(ValueError, match=r'--resize=crop.*--resize=pad'):
    images.fit_to_size(image, (8, 8), None, resize_hint='--resize={}')
  with pytest.raises(ValueError, match="resize must be None, 'crop' or 'pad'"):
    images.fit_to_size(image, (8, 8), 'stretch')


def test_fit_centre_crop():
  image = np.arange(6 * 5, dtype=np.float32).reshape(6, 5, 1)
  cropped, valid = images.fit_to_size(image, (2, 3), 'crop')
  np.testing.assert_array_equal(cropped[..., 0], image[2:4, 1:4, 0])
  assert valid.shape == (2, 3) and valid.all()
  with pytest.raises(ValueError, match="too small.*resize='pad'"):
    images.fit_to_size(image, (8, 3), 'crop')


def test_fit_zero_pad_marks_padding():
  image = np.full((2, 3, 1), 0.5, np.float32)
  padded, valid = images.fit_to_size(image, (4, 6), 'pad')
  assert padded.shape == (4, 6, 1) and padded.dtype == np.float32
  expected_valid = np.zeros((4, 6), bool)
  expected_valid[1:3, 1:4] = True
  np.testing.assert_array_equal(valid, expected_valid)
  np.testing.assert_array_equal(padded[..., 0], np.where(expected_valid, 0.5,
                                                         0.0))
  with pytest.raises(ValueError, match="too large.*resize='crop'"):
    images.fit_to_size(image, (1, 6), 'pad')


def test_model_size():
  assert images.model_size(64) == (64, 64)
  assert images.model_size([32, 48]) == (32, 48)
