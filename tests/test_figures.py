"""Evaluation figures: every PNG is written and readable, on tiny fakes."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import pytest

from eval import evaluator
from eval import figures
from eval import training_curves
from hpunet_jax import models

SIZE = 16
TINY_HPUNET = dict(channels_per_level=(8, 8, 8), latent_dims=(1, 1),
                   num_classes=2, blocks_per_level=1, convs_per_block=1,
                   num_input_channels=1)


@pytest.fixture(scope='module')
def tiny_model():
  model = models.make_model('hpunet', TINY_HPUNET)
  params = jax.jit(model.init)(jax.random.PRNGKey(0),
                               jnp.zeros((1, SIZE, SIZE, 1), jnp.float32),
                               jnp.zeros((1, SIZE, SIZE), jnp.int32))
  return model, params


def _config(objective='geco'):
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.loss = ml_collections.ConfigDict(dict(objective=objective,
                                               kappa=0.05))
  return config


def _lesion_result(rng, num_examples=2, num_graders=4):
  examples = [dict(
      image=rng.random((SIZE, SIZE, 1)).astype(np.float32),
      graders=rng.random((num_graders, SIZE, SIZE)) > 0.5,
      recon=rng.random((num_graders, SIZE, SIZE)) > 0.5,
      samples=rng.random((16, SIZE, SIZE)) > 0.5) for _ in range(num_examples)]
  return evaluator.EvalResult({}, {}, examples)


def _instance_result(rng, num_examples=2, num_ids=5):
  examples = [dict(
      image=rng.random((SIZE, SIZE, 1)).astype(np.float32),
      target=rng.integers(0, num_ids + 1, (SIZE, SIZE)),
      recon=rng.integers(0, num_ids + 1, (SIZE, SIZE)),
      clusters=rng.integers(0, 30, (SIZE, SIZE)),
      samples=rng.integers(0, num_ids + 1, (16, SIZE, SIZE)),
      instances=rng.integers(0, 40, (SIZE, SIZE)))
              for _ in range(num_examples)]
  return evaluator.EvalResult({}, {}, examples)


def _write_metrics(workdir, num_records=5, geco=True):
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    for step in range(1, num_records + 1):
      record = dict(step=step, loss=1.0 / step, rec_sum=10.0 / step,
                    rec_mean=0.2 / step, kl_sum=3.0 + step, kl_0=1.0 + step,
                    kl_1=2.0)
      if geco:
        record['lambda'] = 1.0 + 0.1 * step
      f.write(json.dumps(record) + '\n')


def _check_png(path, min_width=200, min_height=100):
  assert os.path.isfile(path)
  with Image.open(path) as image:
    image.verify()
  with Image.open(path) as image:
    width, height = image.size
    assert width >= min_width and height >= min_height, (path, image.size)
    pixels = np.asarray(image.convert('RGB'))
  assert pixels.std() > 0, f'{path} is blank'


def test_lesion_figures(tiny_model, tmp_path):
  model, params = tiny_model
  rng = np.random.default_rng(0)
  _write_metrics(tmp_path)
  out_dir = tmp_path / 'eval' / 'test'
  paths = figures.write_figures(str(out_dir), _config(), params, model,
                                _lesion_result(rng), str(tmp_path))
  names = sorted(os.path.basename(p) for p in paths)
  assert names == ['levels.png', 'samples.png', 'training_curves.png']
  for path in paths:
    _check_png(path)
  # samples.png: image + 4 graders + 4 recons + 8 samples + std = 18 columns.
  with Image.open(out_dir / 'samples.png') as image:
    assert image.size[0] > 4 * image.size[1]


def test_instance_figures_without_metrics(tiny_model, tmp_path):
  model, params = tiny_model
  rng = np.random.default_rng(1)
  paths = figures.write_figures(str(tmp_path), _config(), params, model,
                                _instance_result(rng), str(tmp_path))
  assert sorted(os.path.basename(p) for p in paths) == ['clustering.png',
                                                        'levels.png']
  for path in paths:
    _check_png(path)


def test_single_level_model_and_no_examples_skip_figures(tmp_path):
  model = models.make_model('hpunet', dict(TINY_HPUNET, latent_dims=(1,)))
  assert model.num_latent_levels == 1
  result = _lesion_result(np.random.default_rng(2), num_examples=1)
  paths = figures.write_figures(str(tmp_path), _config(), None, model, result,
                                None)
  assert [os.path.basename(p) for p in paths] == ['samples.png']
  assert figures.write_figures(str(tmp_path / 'empty'), _config(), None,
                               model, evaluator.EvalResult({}, {}, []),
                               str(tmp_path)) == []


def test_training_curves_elbo(tmp_path):
  _write_metrics(tmp_path, geco=False)
  records = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  path = training_curves.write(str(tmp_path / 'curves.png'), _config('elbo'),
                               records)
  _check_png(path)
  assert training_curves.write(str(tmp_path / 'none.png'), _config(),
                               [{'step': 1}]) is None
  assert not (tmp_path / 'none.png').exists()
  assert training_curves.kl_level_keys(records) == ['kl_0', 'kl_1']


def _colour_bar_labels(fig):
  """Labels of the colour bars of every image drawn in `fig`."""
  return [image.colorbar.ax.get_ylabel() for ax in fig.axes
          for image in ax.get_images() if image.colorbar is not None]


def test_training_curves_have_units_and_readable_legends(tmp_path):
  _write_metrics(tmp_path)
  records = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  config = _config()
  config.loss.top_k_fraction = 0.02
  fig = training_curves.make_figure(config, records)
  titles = [ax.get_title() for ax in fig.axes]
  assert titles == ['reconstruction', 'GECO Lagrange multiplier',
                    'KL per latent level', 'KL, all levels']
  y_labels = [ax.get_ylabel() for ax in fig.axes]
  assert 'nats' in y_labels[0] and 'top-k 2%' in y_labels[0]
  assert y_labels[1] == 'lambda (unitless)'
  assert y_labels[2] == y_labels[3] == 'KL (nats per image)'
  assert all(ax.get_xlabel() == 'training step' for ax in fig.axes)
  legends = [[t.get_text() for t in ax.get_legend().get_texts()]
             for ax in fig.axes if ax.get_legend() is not None]
  assert legends == [['reconstruction', 'kappa = 0.05 (GECO target)'],
                     ['level 0 (coarsest)', 'level 1 (finest)']]
  raw_keys = {'rec_mean', 'kl_0', 'kl_1', 'kl_sum'}
  assert not raw_keys & {t for legend in legends for t in legend}


def test_continuous_maps_have_colour_bars_and_rows_are_labelled(tiny_model):
  model, params = tiny_model
  rng = np.random.default_rng(3)
  examples = _lesion_result(rng).examples
  fig = figures.make_samples_figure(examples)
  # One std map per image, each with a labelled colour bar.
  assert _colour_bar_labels(fig) == [figures.BINARY_STD_LABEL] * 2
  rows = [ax.get_ylabel() for ax in fig.axes
          if ax.get_ylabel().startswith('image')]
  assert rows == ['image 0', 'image 1']
  titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
  assert 'sample 0' in titles and 'sample 8' not in titles
  assert 'grader 0' in titles

  images = np.stack([e['image'] for e in examples])
  fig = figures.make_levels_figure(_config(), params, model, images,
                                   num_samples=3)
  rows = [ax.get_ylabel() for ax in fig.axes
          if ax.get_ylabel().startswith('image')]
  settings = [name for name, _ in figures.level_settings(2)]
  assert rows == [f'image {b}\n{name}' for b in (0, 1) for name in settings]
  assert _colour_bar_labels(fig) == [figures.BINARY_STD_LABEL] * 6
  titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
  assert titles == ['image', 'sample 0', 'sample 1', 'sample 2', 'std']

  masked = dict(examples[0], masked_image=examples[0]['image'],
                visible=np.ones((SIZE, SIZE)), target=np.zeros((SIZE, SIZE),
                                                               np.int32),
                recon=np.zeros((SIZE, SIZE), np.int32),
                diversity=np.zeros((SIZE, SIZE)))
  masked['samples'] = np.zeros((4, SIZE, SIZE), np.int32)
  fig = figures.make_extrapolation_figure([masked])
  assert _colour_bar_labels(fig) == [figures.DISAGREEMENT_LABEL]


def test_level_settings():
  assert figures.level_settings(3) == [
      ('full hierarchy', (False, False, False)),
      ('only global level', (False, True, True)),
      ('only local level', (True, True, False))]


def test_one_hot_std_and_colours():
  labels = np.array([[[0, 1]], [[0, 2]]])  # [N=2, H=1, W=2]
  # Pixel 0: all agree -> 0. Pixel 1: half class 1, half 2 -> sqrt(1/2).
  np.testing.assert_allclose(figures.one_hot_std(labels, 3),
                             [[0.0, np.sqrt(0.5)]])
  rgb = figures.colourise_labels(np.array([[0, 1], [2, 1]]),
                                 valid=np.array([[True, True], [True, False]]))
  assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
  assert (rgb[0, 0] == 0).all()  # Background black.
  assert (rgb[1, 1] == 128).all()  # Padding grey.
  assert not (rgb[0, 1] == rgb[1, 0]).all()  # Different ids, colours.
  with pytest.raises(ValueError, match='>= 0'):
    figures.colourise_labels(np.array([[-1]]))
