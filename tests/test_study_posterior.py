"""The study's posterior analysis (`experiments/study/posterior.py`)."""
import math
import types

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.study import posterior as study_posterior
from hpunet_jax import distributions
from hpunet_jax import hpunet


def _fake_model(sample_fg: bool):
  """Reconstructs every grading exactly from the posterior mean; posterior
  samples decode to all-foreground (`sample_fg`) or all-background. Two
  latent levels, 1x1 (posterior sigma 0.5, prior 1) and 2x2 (sigma 2)."""

  def logits_of(fg):
    return jnp.stack([1.0 - fg, fg], axis=-1)

  def gaussians(batch, log_std_1x1):
    return (distributions.DiagonalGaussian(
        jnp.zeros((batch, 1, 1, 1)), jnp.full((batch, 1, 1, 1), log_std_1x1)),
            distributions.DiagonalGaussian(
                jnp.zeros((batch, 2, 2, 3)),
                jnp.full((batch, 2, 2, 3), math.log(2.0))))

  def reconstruct(params, image, segmentation):
    del params, image
    return logits_of(segmentation.astype(jnp.float32))

  def train_forward(params, rng, image, segmentation):
    del params, rng, image
    batch = segmentation.shape[0]
    fg = jnp.full(segmentation.shape, 1.0 if sample_fg else 0.0)
    return hpunet.TrainOutputs(logits_of(fg), jnp.zeros(2),
                               gaussians(batch, math.log(0.5)),
                               gaussians(batch, 0.0))

  return types.SimpleNamespace(reconstruct=reconstruct,
                               train_forward=train_forward)


def _examples():
  """Three 4x4 images with 4 graders: 1, 0 and 4 empty gradings."""
  lesion = np.zeros((4, 4), np.int32)
  lesion[1:3, 1:3] = 1
  counts = (1, 0, 4)
  return [{'image': np.zeros((4, 4, 1), np.float32),
           'graders': np.stack([lesion * 0] * k + [lesion] * (4 - k))}
          for k in counts]


@pytest.mark.parametrize('sample_fg', [False, True])
def test_posterior_scores_by_hand(sample_fg):
  values = study_posterior.posterior_per_image(
      _fake_model(sample_fg), None, _examples(), num_samples=2,
      batch_size=2, seed=0)
  np.testing.assert_array_equal(values['iou_rec_posterior_mean'], 1.0)
  np.testing.assert_array_equal(values['iou_rec_empty_posterior_mean'][[0, 2]],
                                1.0)
  assert np.isnan(values['iou_rec_empty_posterior_mean'][1])
  if sample_fg:  # IoU of a full mask with the 2x2 lesion is 4/16; empty 0.
    expected = [3 / 4 * 0.25, 0.25, 0.0]
    expected_empty = [0.0, np.nan, 0.0]
  else:  # An empty mask scores 1 on empty gradings and 0 on the lesion.
    expected = [1 / 4, 0.0, 1.0]
    expected_empty = [1.0, np.nan, 1.0]
  np.testing.assert_allclose(values['iou_rec_posterior_sample'], expected)
  np.testing.assert_allclose(values['iou_rec_empty_posterior_sample'],
                             expected_empty)
  np.testing.assert_allclose(values['posterior_sigma_1x1'], 0.5, rtol=1e-6)
  np.testing.assert_allclose(values['posterior_sigma_2x2'], 2.0, rtol=1e-6)
  np.testing.assert_allclose(values['prior_sigma_1x1'], 1.0, rtol=1e-6)
  assert all(len(v) == 3 for v in values.values())
