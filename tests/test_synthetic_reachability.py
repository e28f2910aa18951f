"""Synthetic lesions v2 is well posed: the image alone gives the answer.

A hand-written reader that sees only the image (and the task's published
constants: cue level -> probability, style offsets and probabilities)
thresholds it, splits it into connected components, reads each component's
brightness class and applies every grader style. It must reproduce the
generator's enumerated answer distribution exactly (the same masks with the
same probabilities) on every image; if the generator ever made an ambiguity
the image cannot resolve, this fails (the second test shows it can).
"""
import itertools

import numpy as np
import pytest
from scipy import ndimage
from scipy import spatial

from datasets.synthetic_lesions import generator
from datasets.synthetic_lesions import generator_v2
from datasets.synthetic_lesions import synthetic_lesions_dataset_builder

_CONFIGS = {c.name: c for c in
            synthetic_lesions_dataset_builder.Builder.BUILDER_CONFIGS}


def read_answer(image: np.ndarray, spec) -> dict[bytes, float]:
  """The answer distribution a reader of `image` [H, W, 1] uint8 infers:
  `{mask bytes (bool [H, W]): probability}`."""
  image = image[..., 0].astype(np.float64) / 255
  background = np.median(image)  # Lesions cover well under half the image.
  levels = np.asarray(spec.cue_levels)
  foreground = image > background + levels[0] / 2
  components, count = ndimage.label(foreground, structure=np.ones((3, 3)))
  pixels = np.stack(np.meshgrid(np.arange(image.shape[0]),
                                np.arange(image.shape[1]), indexing='ij'),
                    -1).reshape(-1, 2)
  lesion_probs, style_masks = [], []  # [N], [N][S] bool [H, W]
  for label in range(1, count + 1):
    mask = components == label
    contrast = image[mask].mean() - background
    lesion_probs.append(spec.abnormal_probs[
        int(np.argmin(np.abs(levels - contrast)))])
    # Signed distance by nearest-neighbour search (independent of the
    # generator's distance transform).
    to_inside = spatial.cKDTree(pixels[mask.reshape(-1)]).query(pixels)[0]
    to_outside = spatial.cKDTree(pixels[~mask.reshape(-1)]).query(pixels)[0]
    signed = np.where(mask.reshape(-1), -to_outside, to_inside).reshape(
        mask.shape)
    style_masks.append([signed <= offset for offset in spec.style_offsets])
  answer = {}
  for style, style_prob in enumerate(spec.style_probs):
    for subset in itertools.product((False, True), repeat=count):
      prob = style_prob * np.prod([p if chosen else 1 - p for p, chosen in
                                   zip(lesion_probs, subset)])
      grading = np.zeros(image.shape, bool)
      for chosen, masks in zip(subset, style_masks):
        if chosen:
          grading |= masks[style]
      key = grading.tobytes()
      answer[key] = answer.get(key, 0.0) + prob
  return answer


def _true_answer(example) -> dict[bytes, float]:
  params = generator_v2.params_from_features(example)
  modes, probs = generator.enumerate_modes(params)
  return {m.astype(bool).tobytes(): p for m, p in zip(modes, probs)}


def _assert_same_distribution(read, true):
  assert read.keys() == true.keys()
  np.testing.assert_allclose([read[k] for k in true], list(true.values()),
                             rtol=0, atol=1e-6)


@pytest.mark.parametrize('name,num_images', [
    ('default', 150), ('few_lesions', 20), ('many_lesions', 40), ('tiny', 20)])
def test_reader_reproduces_the_answer_distribution_exactly(name, num_images):
  config = _CONFIGS[name]
  split_id = synthetic_lesions_dataset_builder.SPLIT_IDS['test']
  for index in range(num_images):
    example = generator_v2.generate_example(config.spec, config.seed,
                                            split_id, index)
    _assert_same_distribution(read_answer(example['image'], config.spec),
                              _true_answer(example))


def test_reader_notices_an_image_that_hides_the_outline():
  """The check can fail: blur (v1 drew soft edges) moves the outlines the
  reader sees, and the distributions no longer match."""
  config = _CONFIGS['default']
  misses = 0
  for index in range(5):
    example = generator_v2.generate_example(config.spec, config.seed, 2,
                                            index)
    blurred = ndimage.gaussian_filter(example['image'].astype(np.float64),
                                      (1.0, 1.0, 0))
    blurred += np.random.default_rng(index).normal(0, 6, blurred.shape)
    read = read_answer(np.clip(blurred, 0, 255).astype(np.uint8), config.spec)
    misses += read.keys() != _true_answer(example).keys()
  assert misses == 5


def test_oracle_scores_script_on_tiny(tmp_path):
  from datasets import tfds_utils
  from eval import lesion_oracle
  tfds_utils.load_builder('synthetic_lesions', tmp_path, 'tiny')
  scores = lesion_oracle.oracle_scores(
      {'name': 'synthetic_lesions', 'builder_config': 'tiny',
       'data_dir': str(tmp_path)}, num_examples=4, num_samples=16)
  assert set(scores) == {'ged_16', 'diversity_16', 'hm_iou', 'exact_ged',
                         'exact_hm_iou', 'style_coherence', 'style_tv',
                         'presence_bias'}
  assert 0 <= scores['exact_ged'][0] < 0.1  # Samples of the truth itself.
  assert all(np.isfinite(v).all() for v in scores.values())
