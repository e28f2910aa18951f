"""`python -m eval.run_metrics` on a tiny trained checkpoint."""
import json
import pathlib
import subprocess
import sys

from experiments import synthetic_lesions
from experiments import train_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_run_metrics_writes_metrics_oracle_and_figures(tmp_path):
  config = synthetic_lesions.get_config('tiny')
  config.num_train_steps = 2
  config.eval.num_samples = 0  # No evaluation inside training.
  config.data.data_dir = str(tmp_path / 'tfds')
  workdir = tmp_path / 'run'
  train_lib.train_and_evaluate(config, str(workdir))
  run = subprocess.run(
      [sys.executable, '-m', 'eval.run_metrics', f'--workdir={workdir}',
       '--num_samples=6', '--num_examples=3', '--split=validation',
       # A protocol other than the config's: written into metrics.json.
       '--few_samples=4', '--hm_iou_convention=repeat_gt',
       '--noged_self_pairs'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert run.returncode == 0, run.stderr
  assert 'oracle' in run.stdout and 'exact_ged' in run.stdout
  out = workdir / 'eval' / 'validation'
  summary = json.loads((out / 'metrics.json').read_text())
  assert summary['num_images'] == 3 and summary['num_samples'] == 6
  for key in ('iou_rec', 'ged_6', 'ged_4', 'hm_iou', 'exact_ged',
              'exact_hm_iou', 'diversity_4', 'diversity_6', 'ece'):
    assert 0.0 <= summary[key] <= 2.0 and key + '_std' in summary
  assert -1.0 <= summary['ncc'] <= 1.0
  assert summary['protocol'] == {
      'few_samples': 4, 'hm_iou_convention': 'repeat_gt',
      'ged_self_pairs': False, 'num_samples': 6, 'num_examples': 3,
      'split': 'validation', 'data': 'synthetic_lesions',
      'builder_config': 'tiny'}
  assert summary['oracle']['exact_ged'] < 0.5
  for name in ('samples.png', 'training_curves.png'):
    assert (out / name).stat().st_size > 1000
  missing = subprocess.run(
      [sys.executable, '-m', 'eval.run_metrics',
       f'--workdir={tmp_path / "nothing"}'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert missing.returncode == 1
  assert missing.stderr.strip().splitlines()[-1].startswith(
      'run_metrics: No checkpoints in'), missing.stderr
  assert 'Traceback' not in missing.stderr
