"""`experiments.predict`: image reading, fitting, statistics, end to end."""
import os
import pathlib
import struct
import subprocess
import sys
from unittest import mock
import zlib

import numpy as np
from PIL import Image
import pytest
import tifffile

from experiments import predict
from experiments import prediction_outputs
from experiments import synthetic_lesions
from experiments import train_lib
from hpunet_jax import images

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _write_png(path, array):
  Image.fromarray(array).save(path)
  return str(path)


# --- Reading and converting images. ---


def test_read_grey_and_colour(tmp_path):
  grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
  colour = np.stack([grey, grey + 1, grey + 2], axis=-1)
  np.testing.assert_array_equal(
      predict.read_image(_write_png(tmp_path / 'g.png', grey)), grey[..., None])
  np.testing.assert_array_equal(
      predict.read_image(_write_png(tmp_path / 'c.png', colour)), colour)
  rgba = np.concatenate([colour, np.full((3, 4, 1), 7, np.uint8)], axis=-1)
  np.testing.assert_array_equal(
      predict.read_image(_write_png(tmp_path / 'a.png', rgba)), colour)


def test_read_errors_name_the_file(tmp_path):
  missing = str(tmp_path / 'missing.png')
  with pytest.raises(FileNotFoundError, match='missing.png'):
    predict.read_image(missing)
  corrupt = tmp_path / 'corrupt.png'
  corrupt.write_bytes(b'\x89PNG\r\n\x1a\n' + b'not really a png' * 4)
  with pytest.raises(predict.ImageError, match='corrupt.png'):
    predict.read_image(str(corrupt))
  truncated = tmp_path / 'truncated.png'
  _write_png(truncated, np.random.default_rng(0).integers(
      0, 255, (32, 32), dtype=np.uint8))
  truncated.write_bytes(truncated.read_bytes()[:60])
  with pytest.raises(predict.ImageError, match='truncated.png'):
    predict.read_image(str(truncated))
  colour16 = tmp_path / 'colour16.png'
  _write_16_bit_rgb_png(colour16, np.full((2, 3, 3), 1000, np.uint16))
  with pytest.raises(predict.ImageError,
                     match='colour16.png: 16-bit colour PNGs.*.npy or TIFF'):
    predict.read_image(str(colour16))
  bomb = _write_png(tmp_path / 'bomb.png', np.zeros((64, 64), np.uint8))
  with mock.patch.object(Image, 'MAX_IMAGE_PIXELS', 1000):
    with pytest.raises(predict.ImageError, match='bomb.png: cannot read'):
      predict.read_image(bomb)
  bad_npy = tmp_path / 'bad.npy'
  bad_npy.write_bytes(b'not an array')
  with pytest.raises(predict.ImageError, match='bad.npy: cannot read'):
    predict.read_image(str(bad_npy))
  np.save(tmp_path / 'volume.npy', np.zeros((2, 3, 4, 5), np.float32))
  with pytest.raises(predict.ImageError, match=r'volume.npy: .*\(2, 3, 4, 5\)'):
    predict.read_image(str(tmp_path / 'volume.npy'))


def _write_16_bit_rgb_png(path, array):
  """A 16-bit RGB PNG written by hand (Pillow cannot write one)."""
  height, width, _ = array.shape
  raw = b''.join(b'\x00' + array[row].astype('>u2').tobytes()
                 for row in range(height))

  def chunk(kind, data):
    body = kind + data
    return (struct.pack('>I', len(data)) + body
            + struct.pack('>I', zlib.crc32(body) & 0xffffffff))

  path.write_bytes(b'\x89PNG\r\n\x1a\n'
                   + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 16,
                                                2, 0, 0, 0))
                   + chunk(b'IDAT', zlib.compress(raw))
                   + chunk(b'IEND', b''))


def test_read_keeps_16_bit_grey_tiff_and_npy_dtypes(tmp_path):
  deep = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000
  Image.fromarray(deep).save(tmp_path / 'deep.png')
  read = predict.read_image(str(tmp_path / 'deep.png'))
  assert read.dtype == np.uint16
  np.testing.assert_array_equal(read, deep[..., None])
  tifffile.imwrite(tmp_path / 'scan.tif', deep)
  np.testing.assert_array_equal(predict.read_image(str(tmp_path / 'scan.tif')),
                                deep[..., None])
  floats = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
  np.save(tmp_path / 'scan.npy', floats)
  read = predict.read_image(str(tmp_path / 'scan.npy'))
  assert read.dtype == np.float32
  np.testing.assert_array_equal(read, floats[..., None])


# --- Statistics of the samples. ---


def test_entropy_hand_cases():
  probs = np.array([[[1.0, 0.0], [0.5, 0.5]],
                    [[0.25, 0.75], [0.9, 0.1]]])  # [H=2, W=2, K=2]
  entropy_of = lambda p: -(p * np.log(p) + (1 - p) * np.log(1 - p))
  np.testing.assert_allclose(predict.predictive_entropy(probs),
                             [[0.0, np.log(2)],
                              [entropy_of(0.25), entropy_of(0.9)]])
  uniform = np.full((1, 1, 4), 0.25)
  np.testing.assert_allclose(predict.predictive_entropy(uniform),
                             [[np.log(4)]])


def test_binary_statistics_hand_case():
  # Two samples, one pixel each of [H=1, W=2]; K = 2.
  p_foreground = np.array([[[0.2, 0.9]], [[0.6, 0.9]]])  # [N, H, W]
  probs = np.stack([1 - p_foreground, p_foreground], axis=-1)
  stats = predict.sample_statistics(probs)
  np.testing.assert_array_equal(stats['labels'], [[[0, 1]], [[1, 1]]])
  np.testing.assert_allclose(stats['mean_probs'][..., 1], [[0.4, 0.9]])
  np.testing.assert_allclose(stats['std'], [[0.2, 0.0]])  # std of p(fg).
  np.testing.assert_allclose(
      stats['entropy'],
      [[-(0.4 * np.log(0.4) + 0.6 * np.log(0.6)),
        -(0.9 * np.log(0.9) + 0.1 * np.log(0.1))]])


def test_multiclass_statistics_use_one_hot_std():
  eye = np.eye(3)
  # Pixel 0: samples agree on class 2; pixel 1: classes 0, 1, 2, 2.
  probs = np.array([[eye[2], eye[0]], [eye[2], eye[1]],
                    [eye[2], eye[2]], [eye[2], eye[2]]])[:, None]
  stats = predict.sample_statistics(probs)  # probs [N=4, H=1, W=2, K=3]
  # sqrt(1 - sum_k p_k^2) with p = (1/4, 1/4, 1/2) -> sqrt(5/8).
  np.testing.assert_allclose(stats['std'], [[0.0, np.sqrt(5 / 8)]])
  np.testing.assert_allclose(stats['mean_probs'][0, 1], [0.25, 0.25, 0.5])
  with pytest.raises(ValueError, match=r'\[N, H, W, K\]'):
    predict.sample_statistics(probs[0])


def test_write_outputs_with_padding(tmp_path):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 8, 8, 2))
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  image, valid = images.fit_to_size(
      rng.random((6, 8, 1)).astype(np.float32), (8, 8), 'pad')
  paths = prediction_outputs.write_outputs(str(tmp_path), image,
                                predict.sample_statistics(probs), valid)
  names = {os.path.basename(p) for p in paths}
  assert {'sample_00.png', 'sample_02_colour.png', 'mean_std.png', 'std.npy',
          'entropy.png', 'contact_sheet.png'} <= names
  ids = np.asarray(Image.open(tmp_path / 'sample_01.png'))
  assert ids.shape == (8, 8)
  assert (ids[~valid] == prediction_outputs.PADDING_LABEL).all()
  assert set(np.unique(ids[valid])) <= {0, 1}
  std = np.load(tmp_path / 'std.npy')
  assert np.isnan(std[~valid]).all() and np.isfinite(std[valid]).all()
  with Image.open(tmp_path / 'contact_sheet.png') as sheet:
    assert sheet.size[0] > 300 and sheet.size[1] > 150


# --- The command line. ---


def _run_main(env=None, **flag_values) -> subprocess.CompletedProcess:
  """Runs `python -m experiments.predict` with these flags (and `env`
  added to the environment)."""
  command = [sys.executable, '-m', 'experiments.predict'] + [
      f'--{name}={value}' for name, value in flag_values.items()]
  return subprocess.run(command, cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=300, check=False,
                        env=dict(os.environ, **(env or {})))


def test_missing_checkpoint_is_one_line_error(tmp_path):
  image = _write_png(tmp_path / 'scan.png', np.zeros((8, 8), np.uint8))
  run = _run_main(workdir=tmp_path / 'run', image=image, out=tmp_path / 'out')
  assert run.returncode == 1
  assert run.stderr.strip().splitlines()[-1].startswith(
      f'predict: No checkpoints in {tmp_path}/run/checkpoints'), run.stderr
  assert 'Traceback' not in run.stderr
  # The image is read before the (slow) restore.
  with pytest.raises(FileNotFoundError, match='nothing.png: no such image'):
    predict.predict(str(tmp_path / 'run'), str(tmp_path / 'nothing.png'), 2,
                    str(tmp_path / 'out'))


def test_out_and_num_samples_errors_come_before_the_restore(tmp_path):
  image = _write_png(tmp_path / 'scan.png', np.zeros((8, 8), np.uint8))
  no_run = str(tmp_path / 'run')  # Never reached: no checkpoint needed.
  with pytest.raises(predict.OutputError, match='--num_samples must be >= 1'):
    predict.predict(no_run, image, 0, str(tmp_path / 'out'))
  with pytest.raises(predict.OutputError, match='scan.png is a file'):
    predict.predict(no_run, image, 2, image)
  foreign = tmp_path / 'mixed'
  foreign.mkdir()
  (foreign / 'sample_00.png').write_bytes(b'')
  (foreign / 'notes.txt').write_text('mine')
  with pytest.raises(predict.OutputError,
                     match=r'holds files predict did not write \(notes.txt\)'):
    predict.predict(no_run, image, 2, str(foreign))
  run = _run_main(workdir=no_run, image=image, out=image, num_samples=2)
  assert run.returncode == 1 and 'Traceback' not in run.stderr
  assert run.stderr.strip().splitlines()[-1] == (
      f'predict: --out {image} is a file; pass a folder.')


def test_end_to_end_after_two_training_steps(tmp_path):
  """Trains the tiny synthetic-lesions HPU-Net 2 steps, then predicts."""
  config = synthetic_lesions.get_config('tiny')
  config.num_train_steps = 2
  config.eval.num_samples = 0
  config.data.data_dir = str(tmp_path / 'tfds')
  workdir = tmp_path / 'run'
  train_lib.train_and_evaluate(config, str(workdir))
  height, width = config.image_size
  # An RGB image smaller than the model's grey input: converted and padded.
  image = _write_png(tmp_path / 'scan.png', np.random.default_rng(0).integers(
      0, 256, (height - 4, width - 6, 3), dtype=np.uint8))
  with pytest.raises(predict.ImageError, match='scan.png is .*--resize=pad'):
    predict.predict(str(workdir), image, 3, str(tmp_path / 'unused'))
  out = tmp_path / 'out'
  out.mkdir()  # An earlier prediction of 6 samples: its files are replaced.
  for name in ('sample_05.png', 'sample_05_colour.png', 'std.npy'):
    (out / name).write_bytes(b'old')
  cache = tmp_path / 'xla_cache'
  run = _run_main(workdir=workdir, image=image, out=out, num_samples=3,
                  resize='pad', seed=1, env={'HPUNET_JAX_CACHE': str(cache)})
  assert run.returncode == 0, run.stderr
  # The compiled samplers are kept for the next prediction.
  assert any(cache.iterdir())
  assert f'Removing 3 files of an earlier prediction from {out}' in run.stdout
  assert not (out / 'sample_05.png').exists()
  assert sorted(p.name for p in out.glob('sample_*[0-9].png')) == [
      'sample_00.png', 'sample_01.png', 'sample_02.png']
  for index in range(3):
    ids = np.asarray(Image.open(out / f'sample_{index:02d}.png'))
    assert ids.shape == (height, width)
    assert set(np.unique(ids)) <= {0, 1, prediction_outputs.PADDING_LABEL}
    # The top padding rows.
    assert (ids[:2] == prediction_outputs.PADDING_LABEL).all()
  std = np.load(out / 'std.npy')
  assert std.shape == (height, width)
  assert np.nanmax(std) <= 0.5 and np.nanmin(std) >= 0
  mean_probs = np.load(out / 'mean_probs.npy')
  np.testing.assert_allclose(mean_probs.sum(-1), 1.0, rtol=1e-5)
  entropy = np.load(out / 'entropy.npy')
  assert np.nanmax(entropy) <= np.log(2) + 1e-6
  for name in ('mean_std.png', 'entropy.png', 'contact_sheet.png'):
    with Image.open(out / name) as figure:
      figure.verify()
