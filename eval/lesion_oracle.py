"""Scores of the synthetic-lesions oracle: gradings drawn from the enumerated
answer distribution, scored exactly as the evaluator scores a model's samples
(`eval.task_scores`, with the hierarchy scores of `eval.lesion_styles`).
Used by `experiments/study/oracle_scores.py`."""
import numpy as np

from datasets import pipeline
from eval import bootstrap
from eval import lesion_styles
from eval import task_scores


def oracle_scores(data_config, num_examples: int, num_samples: int,
                  seed: int = 0,
                  protocol: task_scores.LesionProtocol = (
                      task_scores.PAPER_PROTOCOL)
                  ) -> dict:
  """`{metric: [mean, bootstrap std]}` of the oracle over the test images
  (a metric undefined on every image is absent).

  Args:
    data_config: `config.data`-like mapping (name, builder_config, data_dir).
    num_examples: the first this many test images.
    num_samples: oracle samples per image.
    seed: seeds the draws and the bootstrap.
    protocol: how the distribution metrics are computed (default: the
      HPU-Net paper's, as the configs' `eval`).
  """
  rng = np.random.default_rng(seed)
  per_image = {}
  for example in pipeline.eval_examples(data_config, 'test',
                                        limit=num_examples):
    modes = example['modes'] > 0
    probs = example['mode_probs']
    samples = modes[rng.choice(len(probs), size=num_samples, p=probs)]
    values = task_scores.distribution_scores(
        samples, example['graders'] > 0, protocol, modes, probs)
    values.update(lesion_styles.hierarchy_scores(samples,
                                                 example['lesion_params']))
    for name, value in values.items():
      per_image.setdefault(name, []).append(value)
  # As the evaluator: images where a metric is undefined (nan, e.g. the
  # style coherence of a one-lesion image) are left out of its mean.
  finite = {name: np.asarray(values, np.float64) for name, values in
            per_image.items()}
  finite = {name: v[np.isfinite(v)] for name, v in finite.items()}
  return {name: list(bootstrap.bootstrap_mean_std(v, rng=rng))
          for name, v in finite.items() if v.size}
