r"""Scores of the synthetic-lesions oracle, no model needed.

  python -m experiments.study.oracle_scores --builder_config=default \
      --num_examples=200 --out=results/synthetic_lesions_v2/oracle_scores.json

For each test image, 100 gradings drawn from the enumerated answer
distribution are scored exactly as the evaluator scores a model's samples
(`eval.task_scores`: GED^2 at 16 and 100 samples, HM-IoU at 16, and against
the exact distribution). On version 2 the image determines that distribution
(tests/test_synthetic_reachability.py), so these are scores an image-only
model can reach; docs/synthetic_study.md compares them with v1's.
"""
import json
import os

from absl import app
from absl import flags

from eval import lesion_oracle

_BUILDER_CONFIG = flags.DEFINE_string('builder_config', 'default',
                                      'synthetic_lesions builder config.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data directory.')
_NUM_EXAMPLES = flags.DEFINE_integer('num_examples', 200, 'Test images.')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 100, 'Oracle samples.')
_OUT = flags.DEFINE_string('out', None, 'JSON file to write (optional).')


def main(argv):
  del argv
  data_config = {'name': 'synthetic_lesions',
                 'builder_config': _BUILDER_CONFIG.value,
                 'data_dir': _DATA_DIR.value}
  scores = lesion_oracle.oracle_scores(data_config, _NUM_EXAMPLES.value, _NUM_SAMPLES.value)
  for name, (mean, std) in scores.items():
    print(f'{name:>14s} {mean:.4f} ± {std:.4f}')
  if _OUT.value:
    os.makedirs(os.path.dirname(_OUT.value) or '.', exist_ok=True)
    with open(_OUT.value, 'w') as f:
      json.dump({'builder_config': _BUILDER_CONFIG.value,
                 'num_examples': _NUM_EXAMPLES.value,
                 'num_samples': _NUM_SAMPLES.value, 'oracle': scores}, f,
                indent=2)


if __name__ == '__main__':
  app.run(main)
