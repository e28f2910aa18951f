"""`hpunet_jax.load` and `TrainedRun`: the public way to use a trained model."""
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

import hpunet_jax
from experiments import synthetic_lesions
from experiments import train_lib
from hpunet_jax import images

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """A tiny synthetic-lesions HPU-Net trained 2 steps: its workdir."""
  root = tmp_path_factory.mktemp('tiny_run')
  config = synthetic_lesions.get_config('tiny')
  config.num_train_steps = 2
  config.checkpoint_every_steps = 1
  config.eval.num_samples = 0
  config.data.data_dir = str(root / 'tfds')
  workdir = root / 'run'
  train_lib.train_and_evaluate(config, str(workdir))
  return workdir


def _image(run, seed=0):
  height, width = run.image_size
  return np.random.default_rng(seed).integers(0, 256, (height, width),
                                              dtype=np.uint8)


def test_load_and_sample(tiny_run):
  run = hpunet_jax.load(str(tiny_run))
  assert run.step == 2 and run.config.model_type == 'hpunet'
  image = _image(run)
  labels = run.sample(image, num_samples=5, seed=3)
  assert labels.shape == (5,) + run.image_size and labels.dtype == np.int32
  np.testing.assert_array_equal(labels, run.sample(image, 5, seed=3))
  probs = run.probabilities(image, num_samples=5, seed=3)
  assert probs.shape == (5,) + run.image_size + (2,)
  assert probs.dtype == np.float32
  np.testing.assert_array_equal(np.argmax(probs, -1), labels)
  # What the model's own pure functions give for the scaled image.
  logits = run.model.sample(run.params, jax.random.PRNGKey(3),
                            (image / np.float32(255))[None, ..., None], 5)
  np.testing.assert_allclose(probs, jax.nn.softmax(logits[:, 0]), atol=1e-6)
  # The same pixels as float, uint16 or [H, W, 1] are the same input.
  np.testing.assert_allclose(
      run.probabilities(images.image_to_float(image)[..., None], 5, seed=3),
      probs, atol=1e-6)
  np.testing.assert_allclose(
      run.probabilities(image.astype(np.uint16) * 257, 5, seed=3), probs,
      atol=1e-6)
  reconstruction = run.reconstruct(image, (image > 128).astype(np.int32))
  assert reconstruction.shape == run.image_size + (2,)
  np.testing.assert_allclose(reconstruction.sum(-1), 1, rtol=1e-5)


def test_other_checkpoint_and_clear_errors(tiny_run, tmp_path):
  assert hpunet_jax.load(str(tiny_run), step=1).step == 1
  with pytest.raises(FileNotFoundError, match=r'No checkpoint of step 7 in .*'
                     r'checkpoints; there are \[1, 2\]'):
    hpunet_jax.load(str(tiny_run), step=7)
  with pytest.raises(FileNotFoundError,
                     match=f'No checkpoints in {tmp_path}/checkpoints'):
    hpunet_jax.load(str(tmp_path))
  run = hpunet_jax.load(str(tiny_run))
  height, width = run.image_size
  with pytest.raises(ValueError, match=rf'image is 5x7 \(HxW\), the model '
                     rf"needs {height}x{width}: pass resize='crop'"):
    run.sample(np.zeros((5, 7), np.uint8))
  assert run.sample(np.zeros((5, 7), np.uint8), 2,
                    resize='pad').shape == (2, height, width)
  with pytest.raises(ValueError, match='num_samples must be a positive '
                     'integer, got 0'):
    run.sample(_image(run), num_samples=0)
  with pytest.raises(ValueError, match='signed integers'):
    run.sample(_image(run).astype(np.int16))
  with pytest.raises(ValueError, match=r'segmentation ids must lie in \[0, 2\)'):
    run.reconstruct(_image(run), np.full(run.image_size, 2))


def _readme_python_example() -> str:
  readme = (REPO_ROOT / 'README.md').read_text()
  blocks = re.findall(r'```python\n(.*?)```', readme, re.DOTALL)
  examples = [b for b in blocks if 'hpunet_jax.load(' in b]
  assert examples, 'README.md has no Python example using hpunet_jax.load'
  return examples[0]


def test_readme_example_runs_outside_the_repository(tiny_run, tmp_path):
  """The README's Python example, from a folder outside the repository and
  with no repository path on sys.path: only the installed package."""
  example = _readme_python_example()
  assert example.count('\n') <= 8, example
  run = hpunet_jax.load(str(tiny_run))
  np.save(tmp_path / 'scan.npy', _image(run))
  code = ('import sys\n'
          f'assert not any(p and os.path.samefile(p, {str(REPO_ROOT)!r}) '
          'for p in sys.path if os.path.isdir(p)), sys.path\n'
          + example.replace('/tmp/hpunet_lesions', str(tiny_run))
          + '\nprint(labels.shape, labels.dtype, probs.shape)\n'
          'import importlib.util\n'
          "print('experiments importable:', "
          "importlib.util.find_spec('experiments') is not None)\n")
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  result = subprocess.run([sys.executable, '-c', 'import os\n' + code],
                          cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  height, width = run.image_size
  assert f'(16, {height}, {width}) int32 (16, {height}, {width}, 2)' in (
      result.stdout), result.stdout
  assert 'experiments importable: False' in result.stdout
