"""The evaluator's plumbing: sampling reduction, per-task scores, summary."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from eval import evaluation
from eval import evaluator
from eval import field_metrics
from eval import task_scores
from hpunet_jax import models
from hpunet_jax.runtime import run_record
from tests.test_model import TINY_HPUNET


def _identity_reconstruct(image, segmentation):
  del image
  return np.asarray(segmentation)


def test_sample_labels_equal_argmax_of_model_sample():
  model = models.make_model('hpunet', dict(TINY_HPUNET, num_classes=3))
  image = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 1))
  params = model.init(jax.random.PRNGKey(1), image,
                      jnp.zeros((2, 16, 16), jnp.int32))
  key = jax.random.PRNGKey(2)
  labels, foreground = evaluator.sample_labels(model, params, key, image, 5,
                                               foreground_classes=(1, 2))
  logits = model.sample(params, key, image, 5)
  np.testing.assert_array_equal(labels, jnp.argmax(logits, -1))
  probs = jax.nn.softmax(logits, -1)
  np.testing.assert_allclose(foreground, probs[..., 1:].sum(-1).mean(0),
                             atol=1e-5)
  labels, per_sample = evaluator.sample_labels(
      model, params, key, image, 5, per_sample_probabilities=True)
  np.testing.assert_array_equal(labels, jnp.argmax(logits, -1))
  np.testing.assert_allclose(per_sample, probs, atol=1e-6)


class _FixedLogits:
  """A model whose samples are given logits `[N, B, H, W, K]`."""

  def __init__(self, logits):
    self.logits = jnp.asarray(logits, jnp.float32)

  def sample(self, params, rng, images, num_samples, per_sample):
    del params, rng, images
    return jax.lax.map(per_sample, self.logits[:num_samples])


def test_ncc_keeps_the_background_probability_at_large_logit_gaps():
  rng = np.random.default_rng(3)
  # Foreground ahead by 18 (+-2) in the core, behind by as much outside,
  # and samples disagreeing (logits in [-4, 4]) on a ring around the core.
  core = np.zeros((12, 12), bool)
  core[4:8, 3:9] = True
  ring = np.zeros((12, 12), bool)
  ring[2:10, 1:11] = True
  ring &= ~core
  gap = 18 + rng.uniform(-2, 2, size=(12, 12, 12))
  fg_logit = np.where(ring, rng.uniform(-4, 4, size=gap.shape),
                      np.where(core, gap, -gap))
  logits = np.stack([np.zeros_like(fg_logit), fg_logit], axis=-1)[:, None]
  graders = np.stack([core, core | ring, np.roll(core, 1, 0),
                      core]).astype(np.int32)
  labels, probs = evaluator.sample_labels(
      _FixedLogits(logits), None, None, np.zeros((1, 12, 12, 1)), 12,
      per_sample_probabilities=True)
  assert probs.shape == (12, 1, 12, 12, 2) and probs.dtype == jnp.float32
  example = {'image': np.zeros((12, 12, 1), np.float32), 'graders': graders,
             'mask': np.ones((12, 12), np.float32)}
  values, _, _ = task_scores.score_lesions(
      example, np.asarray(labels[:, 0]), _identity_reconstruct,
      np.random.default_rng(0),
      task_scores.LesionProtocol(few_samples=4), np.asarray(probs[:, 0]))
  exact = np.exp(logits[:, 0] - logits[:, 0].max(-1, keepdims=True))
  exact /= exact.sum(-1, keepdims=True)  # float64 two-class softmax.
  expected = field_metrics.variance_ncc(exact, graders)
  assert values['ncc'] == pytest.approx(expected, abs=1e-6)
  # Rebuilding the background as 1 - foreground (float32) loses it.
  rebuilt = field_metrics.binary_class_probabilities(
      np.asarray(probs[:, 0, ..., 1]))
  assert abs(field_metrics.variance_ncc(rebuilt, graders) - expected) > 1e-4


def _lesion_example():
  a = np.zeros((8, 8), np.int32)
  a[2:5, 2:5] = 1
  b = np.zeros((8, 8), np.int32)
  b[1:6, 1:6] = 1
  modes = np.stack([a, b, np.zeros_like(a)])
  probs = np.array([0.5, 0.25, 0.25])
  return {'image': np.zeros((8, 8, 1), np.float32),
          'graders': np.stack([a, a, b, np.zeros_like(a)]),
          'modes': modes, 'mode_probs': probs,
          'mask': np.ones((8, 8), np.float32)}


def test_lesion_scores_perfect_reconstruction_and_true_samples():
  example = _lesion_example()
  rng = np.random.default_rng(0)
  # Samples from the true distribution, in exact proportion (16 = 8+4+4).
  samples = example['modes'][np.repeat([0, 1, 2], [8, 4, 4])]
  values, oracle, arrays = task_scores.score_lesions(
      example, samples, _identity_reconstruct, rng)
  assert values['iou_rec'] == 1.0
  # Exact proportions: the weighted HM-IoU is a perfect match...
  np.testing.assert_allclose(values['exact_hm_iou'], 1.0)
  # ...and the exact GED is 0 (self pairs included on both sides).
  np.testing.assert_allclose(values['exact_ged'], 0.0, atol=1e-12)
  assert set(oracle) == {'ged_16', 'diversity_16', 'hm_iou', 'exact_ged',
                         'exact_hm_iou'}
  assert arrays['samples'].shape == (16, 8, 8)


def test_instance_scores_with_perfect_samples():
  instances = np.zeros((16, 16), np.int32)
  instances[:, :8], instances[:, 8:] = 1, 2
  instances[:, 7:9] = 0  # Membrane.
  example = {'image': np.zeros((16, 16, 1), np.float32),
             'instances': instances, 'mask': np.ones((16, 16), np.float32)}
  # Every sample labels the two cells consistently (different ids).
  samples = np.stack([np.where(instances == 1, 1 + s % 3,
                               np.where(instances == 2, 4, 0))
                      for s in range(16)])
  values, _, arrays = task_scores.score_instances(
      example, samples, _identity_reconstruct, np.random.default_rng(0),
      num_instance_ids=4, cluster_alpha=4, cluster_no_neighbour='keep')
  assert values['iou_rec'] == 1.0
  assert values['rand_error'] == 0.0
  assert len(np.unique(arrays['clusters'])) == 3


def test_format_table_has_model_and_oracle_rows():
  table = evaluation.format_table({
      'iou_rec': 0.9, 'iou_rec_std': 0.01, 'num_images': 3,
      'oracle': {'exact_ged': 0.1, 'exact_ged_std': 0.02}})
  assert 'model' in table and 'oracle' in table and 'iou_rec' in table


def test_tiny_evaluation_reports_counts_rate_and_eta(tmp_path, caplog,
                                                     monkeypatch):
  import logging  # pylint: disable=g-import-not-at-top
  from experiments import synthetic_lesions  # pylint: disable=g-import-not-at-top
  from hpunet_jax.runtime import progress  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(progress, 'LOG_EVERY_SECONDS', 0.0)  # Every batch.
  caplog.set_level(logging.INFO)
  config = synthetic_lesions.get_config('tiny')
  config.data.data_dir = str(tmp_path / 'tfds')
  config.eval.update(batch_size=1, num_examples=3, num_resamples=10,
                     num_figure_examples=0)
  model = models.make_model(config.model_type, config.model.to_dict())
  size = tuple(config.image_size)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + size + (1,)),
                      jnp.zeros((1,) + size, jnp.int32))
  result = evaluator.Evaluator(config, model).run(params, 'validation', 2)
  assert result.metrics['num_images'] == 3
  lines = [r.getMessage() for r in caplog.records
           if 'evaluating synthetic_lesions:validation' in r.getMessage()]
  assert 'first 1 images done in' in lines[1], lines
  # After the compiling batch: counts, per-image and per-sample rates, ETA.
  assert '2/3 images (67%)' in lines[2] and 'ETA 0:00:' in lines[2], lines
  assert 'images/s' in lines[2] and 'samples/s' in lines[2], lines
  assert lines[-1].startswith(
      'evaluating synthetic_lesions:validation: done, 3/3 images'), lines


def test_metrics_carry_the_runs_convergence_for_its_last_step(tmp_path):
  config = ml_collections.ConfigDict({'a': 1})
  verdict = {'converged': False, 'rule': 'geco_equilibrium',
             'values': {'spikes': 2},
             'reason': 'constraint -0.2 per pixel outside +-0.05'}
  run_record.write_finished(str(tmp_path), 1500, config, verdict)
  assert evaluation.training_convergence(str(tmp_path), 1500) == {
      'converged': False, 'convergence': verdict}
  # Another checkpoint, no workdir, or an unfinished run: no verdict.
  none = {'converged': None, 'convergence': None}
  assert evaluation.training_convergence(str(tmp_path), 1000) == none
  assert evaluation.training_convergence(None, 1500) == none
  assert evaluation.training_convergence(str(tmp_path / 'x'), 1500) == none
  assert evaluation.convergence_line(verdict) == (
      'Training ended NOT converged (geco_equilibrium: constraint -0.2 per '
      'pixel outside +-0.05; 2 reconstruction-loss spikes).')
