"""The extrapolation task (paper Sec. 3.3): masking, what the prior and the
posterior see, the scores, and a tiny training run end to end."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from datasets import masking
from eval import evaluator
from eval import task_scores
from experiments import snemi3d
from experiments import synthetic_cells
from experiments import train_lib
from hpunet_jax import models

SIZE = 16
NUM_CLASSES = 4
MASK_OPTIONS = dict(mode='line', min_fraction=0.5, max_fraction=0.5,
                    num_boxes=1, num_classes=NUM_CLASSES)
# Image (1) + one-hot labels (K) + visibility (1); the last K + 1 are the
# prior's only.
MODEL = dict(channels_per_level=(8, 8, 8), latent_dims=(1, 1),
             num_classes=NUM_CLASSES, blocks_per_level=1, convs_per_block=1,
             num_input_channels=1 + NUM_CLASSES + 1,
             num_prior_only_channels=NUM_CLASSES + 1)


def _batch(seed=0, batch_size=2):
  rng = np.random.default_rng(seed)
  return {
      'image': rng.random((batch_size, SIZE, SIZE, 1)).astype(np.float32),
      'segmentation': rng.integers(0, NUM_CLASSES, (batch_size, SIZE, SIZE),
                                   dtype=np.int32),
      'mask': np.ones((batch_size, SIZE, SIZE), np.float32)}


def _mask(batch, key=0, **overrides):
  options = dict(MASK_OPTIONS, **overrides)
  return jax.tree.map(np.asarray, masking.extrapolation_mask(
      jax.random.PRNGKey(key), batch, **options))


def test_line_mask_hides_image_and_keeps_targets_and_loss_mask():
  batch = _batch()
  batch['mask'][:, :, -1] = 0  # A padded column.
  out = _mask(batch)
  hidden_rows = SIZE // 2  # Fraction 0.5: rows 0..7 hidden.
  expected_visible = np.zeros((SIZE, SIZE), np.float32)
  expected_visible[hidden_rows:] = 1
  np.testing.assert_array_equal(out['visible'],
                                np.broadcast_to(expected_visible, (2,) +
                                                expected_visible.shape))
  assert out['image'].shape == (2, SIZE, SIZE, 1 + NUM_CLASSES + 1)
  np.testing.assert_array_equal(out['image'][:, :hidden_rows, :, 0], 0)
  np.testing.assert_array_equal(out['image'][:, hidden_rows:, :, 0],
                                batch['image'][:, hidden_rows:, :, 0])
  # Labels only where visible and valid; the last channel is the visibility.
  known = (expected_visible * batch['mask'])[..., None]
  one_hot = np.eye(NUM_CLASSES, dtype=np.float32)[batch['segmentation']]
  np.testing.assert_array_equal(out['image'][..., 1:-1], one_hot * known)
  np.testing.assert_array_equal(out['image'][..., -1], out['visible'])
  # Targets and loss mask are not masked: the loss covers the whole image.
  np.testing.assert_array_equal(out['segmentation'], batch['segmentation'])
  np.testing.assert_array_equal(out['mask'], batch['mask'])


@pytest.mark.parametrize('mode', ['line', 'boxes', 'both'])
def test_random_regions_stay_within_their_fractions(mode):
  batch = _batch(batch_size=8)
  out = _mask(batch, mode=mode, min_fraction=0.25, max_fraction=0.5,
              num_boxes=1)
  hidden = out['visible'] == 0
  assert set(np.unique(out['visible'])) <= {0.0, 1.0}
  per_image = hidden.mean(axis=(1, 2))
  if mode == 'line':
    # Everything above one row, between 4 and 8 of the 16 rows.
    rows_hidden = hidden.all(axis=2).sum(axis=1)
    np.testing.assert_array_equal(rows_hidden * SIZE, hidden.sum((1, 2)))
    assert rows_hidden.min() >= 4 and rows_hidden.max() <= 8
  elif mode == 'boxes':
    assert per_image.min() >= (4 * 4) / SIZE**2
    assert per_image.max() <= (8 * 8) / SIZE**2
  else:
    assert per_image.min() >= 4 / SIZE
  assert len(np.unique(per_image)) > 1  # Independent draws per example.
  # The image is 0 exactly where hidden.
  np.testing.assert_array_equal(out['image'][..., 0][hidden], 0)


def test_bad_masking_options_are_clear_errors():
  batch = _batch()
  with pytest.raises(ValueError, match='mode'):
    _mask(batch, mode='circle')
  with pytest.raises(ValueError, match='min_fraction'):
    _mask(batch, min_fraction=0.8, max_fraction=0.2)
  with pytest.raises(ValueError, match='num_boxes'):
    _mask(batch, mode='boxes', num_boxes=0)
  with pytest.raises(ValueError, match='segmentation'):
    masking.extrapolation_mask(jax.random.PRNGKey(0),
                               {'image': batch['image'],
                                'mask': batch['mask']}, **MASK_OPTIONS)


def test_model_options_are_validated():
  kwargs = dict(MODEL, num_input_channels=None)
  with pytest.raises(ValueError, match='num_input_channels'):
    models.make_model('hpunet', kwargs).init(
        jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, 6)),
        jnp.zeros((1, SIZE, SIZE), jnp.int32))
  kwargs = dict(MODEL, num_input_channels=NUM_CLASSES + 1)  # No image left.
  with pytest.raises(ValueError, match='num_prior_only_channels'):
    models.make_model('hpunet', kwargs).init(
        jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, 5)),
        jnp.zeros((1, SIZE, SIZE), jnp.int32))
  with pytest.raises(ValueError, match='num_prior_only_channels'):
    masking.check_model_kwargs(MASK_OPTIONS,
                               dict(MODEL, num_prior_only_channels=0))
  with pytest.raises(ValueError, match='num_classes'):
    masking.check_model_kwargs(dict(MASK_OPTIONS, num_classes=3), MODEL)


@pytest.fixture(scope='module')
def model_and_params():
  model = models.make_model('hpunet', MODEL)
  batch = _mask(_batch())
  params = jax.jit(model.init)(jax.random.PRNGKey(1), batch['image'],
                               batch['segmentation'])
  return model, params


def test_posterior_never_receives_the_prior_only_channels(model_and_params):
  _, params = model_and_params
  stem = 'hpunet/~/{}/~encode/encoder_level0_block0/skip_projection'
  # Posterior: one-hot target (K) + image (1); prior: image + K + 1.
  assert params[stem.format('posterior')]['w'].shape == (
      1, 1, NUM_CLASSES + 1, 8)
  assert params[stem.format('prior')]['w'].shape == (
      1, 1, 1 + NUM_CLASSES + 1, 8)


def _prior_outputs(model, params, batch):
  """Encoder features and decoded logits with fixed keys, float64 leaves."""
  masked = masking.extrapolation_mask(jax.random.PRNGKey(7), batch,
                                      **MASK_OPTIONS)
  encoding = model.encode(params, masked['image'])
  logits = model.decode(params, jax.random.PRNGKey(3), encoding, None)
  return (np.asarray(masked['image']),
          [np.asarray(f) for f in encoding.features], np.asarray(logits),
          np.asarray(masked['visible']))


def test_prior_sees_visible_labels_and_never_hidden_ones(model_and_params):
  model, params = model_and_params
  batch = _batch()
  image, features, logits, visible = _prior_outputs(model, params, batch)
  hidden = visible == 0
  assert hidden.any() and (~hidden).any()

  # Other labels and image pixels inside the hidden region: nothing changes.
  changed = {k: v.copy() for k, v in batch.items()}
  changed['segmentation'][hidden] = (
      changed['segmentation'][hidden] + 1) % NUM_CLASSES
  changed['image'][hidden] = 1.0 - changed['image'][hidden]
  image2, features2, logits2, _ = _prior_outputs(model, params, changed)
  np.testing.assert_array_equal(image2, image)
  for f, f2 in zip(features, features2):
    np.testing.assert_array_equal(f2, f)
  np.testing.assert_array_equal(logits2, logits)

  # Other labels in the visible region: the prior's input and outputs change.
  changed = {k: v.copy() for k, v in batch.items()}
  changed['segmentation'][~hidden] = (
      changed['segmentation'][~hidden] + 1) % NUM_CLASSES
  image3, features3, logits3, _ = _prior_outputs(model, params, changed)
  assert not np.array_equal(image3[..., 1:-1], image[..., 1:-1])
  assert not np.allclose(features3[0], features[0])
  assert not np.allclose(logits3, logits)


def test_label_disagreement():
  samples = np.zeros((4, 1, 3), np.int32)
  samples[:, 0, 1] = [0, 0, 5, 5]  # 8 of 12 ordered pairs disagree.
  samples[:, 0, 2] = [1, 2, 3, 4]  # All disagree.
  np.testing.assert_allclose(task_scores.label_disagreement(samples),
                             [[0.0, 2 / 3, 1.0]])
  with pytest.raises(ValueError, match='2 samples'):
    task_scores.label_disagreement(samples[:1])


def test_extrapolation_scores_inside_and_outside():
  instances = np.zeros((SIZE, SIZE), np.int32)
  instances[:, :7], instances[:, 9:] = 1, 2  # Two cells, a membrane.
  visible = np.zeros((SIZE, SIZE), np.float32)
  visible[SIZE // 2:] = 1
  target = np.where(instances == 1, 1, np.where(instances == 2, 3, 0))
  example = {'image': np.zeros((SIZE, SIZE, 1), np.float32),
             'instances': instances, 'mask': np.ones((SIZE, SIZE), np.float32),
             'target': target, 'visible': visible,
             'model_input': np.zeros((SIZE, SIZE, 1 + NUM_CLASSES + 1),
                                     np.float32)}
  # Samples copy the visible labels and vary above the line.
  samples = np.stack([np.where(visible > 0, target, s % NUM_CLASSES)
                      for s in range(16)]).astype(np.int32)
  values, _, arrays = task_scores.score_extrapolation(
      example, samples, lambda image, seg: np.asarray(seg),
      np.random.default_rng(0), num_instance_ids=NUM_CLASSES - 1,
      cluster_alpha=4, cluster_no_neighbour='keep')
  assert values['iou_rec_visible'] == values['iou_rec_masked'] == 1.0
  assert values['diversity_visible'] == 0.0
  # Each of the 4 labels in 4 of the 16 samples: 4 * 4 * 3 agreeing ordered
  # pairs of 16 * 15.
  assert values['diversity_masked'] == pytest.approx(1 - 48 / 240)
  assert values['rand_error_visible'] == 0.0
  assert values['masked_fraction'] == 0.5
  assert arrays['masked_image'].shape == (SIZE, SIZE, 1)


def test_configs_set_masking_and_channels():
  for module in (synthetic_cells, snemi3d):
    for arg in ('extrapolate', 'extrapolate,tiny'):
      config = module.get_config(arg)
      num_classes = config.model.num_classes
      assert config.masking.num_classes == num_classes
      assert config.model.num_input_channels == 1 + num_classes + 1
      assert config.model.num_prior_only_channels == num_classes + 1
      masking.check_model_kwargs(config.masking, config.model)
    assert module.get_config('hpunet').get('masking', None) is None


def test_trainer_refuses_inconsistent_masking():
  config = synthetic_cells.get_config('extrapolate,tiny')
  config.model.num_prior_only_channels = 0
  with pytest.raises(ValueError, match='num_prior_only_channels'):
    train_lib.validate_config(config)
  with pytest.raises(ValueError, match='extrapolation evaluation'):
    evaluator.check_masking_supported('synthetic_lesions')


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  config = synthetic_cells.get_config('extrapolate,tiny')
  config.data.data_dir = str(tmp_path_factory.mktemp('tfds'))
  config.num_train_steps = 2
  config.eval.update(num_samples=4, num_examples=2, num_resamples=10,
                     num_figure_examples=1)
  workdir = tmp_path_factory.mktemp('run')
  state = train_lib.train_and_evaluate(config, str(workdir))
  return config, state, workdir


def test_tiny_run_writes_inside_outside_metrics_and_figure(tiny_run):
  _, state, workdir = tiny_run
  assert int(state.step) == 2
  out = workdir / 'eval' / 'test' / 'step2_samples4_images2'
  summary = json.loads((out / 'metrics.json').read_text())
  for name in ('iou_rec_masked', 'iou_rec_visible', 'diversity_masked',
               'diversity_visible', 'rand_error_visible', 'masked_fraction'):
    assert name in summary and np.isfinite(summary[name]), (name, summary)
  assert 0.25 <= summary['masked_fraction'] <= 0.75
  assert (out / 'extrapolation.png').stat().st_size
  assert (out / 'levels.png').stat().st_size


def test_evaluation_masks_are_fixed_per_image(tiny_run):
  config, state, _ = tiny_run
  model = models.make_model(config.model_type, config.model.to_dict())
  params = jax.device_get(state.trainable['model'])
  fractions = []
  for batch_size, seed in ((2, 0), (1, 5)):
    config.eval.batch_size = batch_size
    result = evaluator.Evaluator(config, model).run(params, 'test', 2,
                                                    rng_seed=seed)
    fractions.append(result.per_image['masked_fraction'])
    visible = result.examples[0]['visible']
    assert visible[-1].all() and not visible[0].any()  # Hidden at the top.
  np.testing.assert_array_equal(fractions[0], fractions[1])
