"""`python -m eval.run_metrics` on a tiny trained checkpoint."""
import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from eval import outputs
from experiments import synthetic_cells
from experiments import synthetic_lesions
from experiments import train_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run_metrics(*args, timeout=600):
  return subprocess.run(
      [sys.executable, '-m', 'eval.run_metrics', *args],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
      check=False)


def test_run_metrics_keeps_every_evaluation(tmp_path):
  config = synthetic_lesions.get_config('tiny')
  config.num_train_steps = 2
  config.eval.num_samples = 0  # No evaluation inside training.
  config.data.data_dir = str(tmp_path / 'tfds')
  workdir = tmp_path / 'run'
  train_lib.train_and_evaluate(config, str(workdir))
  # A protocol other than the config's: written into metrics.json and into
  # the folder's name.
  protocol = ('--few_samples=4', '--hm_iou_convention=repeat_gt',
              '--noged_self_pairs', '--ece_convention=mose')
  first = _run_metrics(f'--workdir={workdir}', '--num_samples=6',
                       '--num_examples=3', '--split=validation', *protocol)
  assert first.returncode == 0, first.stderr
  assert 'oracle' in first.stdout and 'exact_ged' in first.stdout
  out = (workdir / 'eval' / 'validation' /
         'step2_samples6_images3_few4_repeat_gt_noself_ece_mose')
  assert f'Wrote {out}/' in first.stdout and 'samples.png' in first.stdout
  # No Orbax INFO chatter; the evaluation's own progress lines are there.
  assert 'orbax' not in first.stderr.lower(), first.stderr
  assert 'done, 3/3 images' in first.stderr, first.stderr
  summary = json.loads((out / 'metrics.json').read_text())
  assert summary['num_images'] == 3 and summary['num_samples'] == 6
  for key in ('iou_rec', 'ged_6', 'ged_4', 'hm_iou', 'exact_ged',
              'exact_hm_iou', 'diversity_4', 'diversity_6', 'ece'):
    assert 0.0 <= summary[key] <= 2.0 and key + '_std' in summary
  assert -1.0 <= summary['ncc'] <= 1.0
  assert summary['protocol'] == {
      'few_samples': 4, 'hm_iou_convention': 'repeat_gt',
      'ged_self_pairs': False, 'ece_convention': 'mose', 'num_samples': 6,
      'num_examples': 3,
      'split': 'validation', 'data': 'synthetic_lesions',
      'builder_config': 'tiny'}
  assert summary['oracle']['exact_ged'] < 0.5
  # MoSE's ECE: per-image bin statistics, pooled into the summary's `ece`.
  with np.load(out / 'per_image.npz') as per_image:
    assert per_image['ece_bins'].shape == (3, 3, 11)
    assert 'ece' not in per_image.files
    pooled = per_image['ece_bins'].sum(0)
  assert summary['ece'] == pytest.approx(
      np.abs(pooled[1, 1:] - pooled[2, 1:]).sum() / pooled[0].sum())
  for name in ('samples.png', 'training_curves.png'):
    assert (out / name).stat().st_size > 1000
  first_files = {p.name: p.read_bytes() for p in out.iterdir()}

  # Other settings: a folder of their own; the first stays byte for byte.
  second = _run_metrics(f'--workdir={workdir}', '--num_samples=4',
                        '--num_examples=2', '--split=validation')
  assert second.returncode == 0, second.stderr
  other = workdir / 'eval' / 'validation' / 'step2_samples4_images2'
  assert json.loads((other / 'metrics.json').read_text())['num_images'] == 2
  assert {p.name: p.read_bytes() for p in out.iterdir()} == first_files
  # The same settings again: refused before any work, nothing changed.
  again = _run_metrics(f'--workdir={workdir}', '--num_samples=6',
                       '--num_examples=3', '--split=validation', *protocol)
  assert again.returncode == 1
  assert again.stderr.strip().splitlines()[-1].startswith(
      f'run_metrics: {out} already holds an evaluation'), again.stderr
  assert {p.name: p.read_bytes() for p in out.iterdir()} == first_files
  assert sorted(p.name for p in (workdir / 'eval' / 'validation').iterdir()
                ) == ['step2_samples4_images2',
                      'step2_samples6_images3_few4_repeat_gt_noself_ece_mose']

  missing = _run_metrics(f'--workdir={tmp_path / "nothing"}', timeout=300)
  assert missing.returncode == 1
  assert missing.stderr.strip().splitlines()[-1].startswith(
      'run_metrics: No checkpoints in'), missing.stderr
  assert 'Traceback' not in missing.stderr


def test_num_examples_help_names_the_config_default():
  run = _run_metrics('--helpfull', timeout=300)
  text = ' '.join(run.stdout.split())
  assert 'default config.eval.num_examples' in text, run.stdout[-2000:]


def test_protocol_tag_names_only_departures_from_the_paper():
  assert outputs.protocol_tag({}) == ''
  assert outputs.protocol_tag({'few_samples': 16, 'hm_iou_convention': 'lcm',
                               'ged_self_pairs': True}) == ''
  assert outputs.protocol_tag({'few_samples': 50}) == '_few50'
  assert outputs.protocol_tag({'hm_iou_convention': 'repeat_gt',
                               'ged_self_pairs': False}) == '_repeat_gt_noself'
  assert outputs.protocol_tag({'ece_convention': 'sample_fraction'}) == ''
  assert outputs.protocol_tag({'ece_convention': 'ssn'}) == '_ece_ssn'


def test_results_folders_are_named_by_settings_and_written_whole(tmp_path):
  assert outputs.results_dir('w', 'test', step=1000, num_samples=100,
                             num_examples=None) == os.path.join(
                                 'w', 'eval', 'test',
                                 'step1000_samples100_imagesall')
  out = outputs.results_dir(str(tmp_path), 'test', step=5, num_samples=4,
                            num_examples=2)

  def figures(folder):
    path = os.path.join(folder, 'a.png')
    with open(path, 'wb') as f:
      f.write(b'png')
    return [path]

  def failing_figures(folder):
    figures(folder)
    raise RuntimeError('figure failed')

  paths = outputs.write_results(out, {'iou_rec': 0.5}, {'iou_rec': np.ones(2)},
                                figures, overwrite=False)
  assert paths == [os.path.join(out, 'a.png')] and outputs.is_complete(out)
  with pytest.raises(outputs.ResultsExistError, match='--overwrite'):
    outputs.write_results(out, {'iou_rec': 0.1}, {}, figures, overwrite=False)
  # A failure half-way leaves the earlier folder and no temporary one.
  with pytest.raises(RuntimeError, match='figure failed'):
    outputs.write_results(out, {'iou_rec': 0.2}, {'iou_rec': np.zeros(2)},
                          failing_figures, overwrite=True)
  assert outputs.load_metrics(out) == {'iou_rec': 0.5}
  assert os.listdir(os.path.dirname(out)) == [os.path.basename(out)]
  outputs.write_results(out, {'iou_rec': 0.3}, {'iou_rec': np.zeros(2)},
                        figures, overwrite=True)
  assert outputs.load_metrics(out) == {'iou_rec': 0.3}


def test_same_settings_at_once_take_turns_and_counts_are_checked(tmp_path):
  config = synthetic_cells.get_config('tiny')
  config.num_train_steps = 2
  config.data.data_dir = str(tmp_path / 'tfds')
  workdir = tmp_path / 'run'
  train_lib.train_and_evaluate(config, str(workdir))
  # config.eval.num_samples is 0 in the tiny config: no count to use.
  zero = _run_metrics(f'--workdir={workdir}', timeout=300)
  assert zero.returncode == 1 and 'Traceback' not in zero.stderr
  assert zero.stderr.strip().splitlines()[-1] == (
      f'run_metrics: config.eval.num_samples of {workdir} is 0 (no '
      'evaluation); pass --num_samples=N.')
  huge = _run_metrics(f'--workdir={workdir}', '--num_samples=1000000000',
                      timeout=300)
  assert huge.returncode == 1 and 'Traceback' not in huge.stderr
  last = huge.stderr.strip().splitlines()[-1]
  assert last.startswith('run_metrics: 1000000000 samples per image need at '
                         'least ') and 'samples per image fit.' in last, last
  assert 'compiling' not in huge.stderr  # Refused before sampling.
  # Two identical evaluations at once: the second waits for the first,
  # then replaces it (--overwrite); neither crashes. 200 images of a split
  # of 8: the folder says the whole split was evaluated.
  args = (f'--workdir={workdir}', '--num_samples=4', '--num_examples=200',
          '--overwrite')
  runs = [subprocess.Popen([sys.executable, '-m', 'eval.run_metrics', *args],
                           cwd=REPO_ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
          for _ in range(2)]
  results = [run.communicate(timeout=600) for run in runs]
  for run, (_, stderr) in zip(runs, results):
    assert run.returncode == 0 and 'Traceback' not in stderr, stderr[-3000:]
  assert any('to finish an evaluation with the same settings into '
             f'{workdir}/eval/test/step2_samples4_imagesall' in stderr
             for _, stderr in results)
  out = workdir / 'eval' / 'test' / 'step2_samples4_imagesall'
  assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
  summary = json.loads((out / 'metrics.json').read_text())
  assert summary['num_images'] == 8
  # The clustering threshold follows the 4 samples (16 would make every
  # pixel background, Rand error 1 on every image).
  assert summary['cluster_alpha'] == 4


def test_a_live_writers_folder_is_kept_a_dead_ones_removed(tmp_path):
  out = outputs.results_dir(str(tmp_path), 'test', step=1, num_samples=2,
                            num_examples=None)
  parent, name = os.path.split(out)
  os.makedirs(parent)
  sleeper = subprocess.Popen([sys.executable, '-c',
                              'import time; time.sleep(120)'])
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  host = socket.gethostname()
  live_dir = os.path.join(parent, f'.{name}.incomplete-{host}-{sleeper.pid}')
  other_host = os.path.join(parent, f'.{name}.incomplete-elsewhere-1')
  dead_dirs = [os.path.join(parent, f'.{name}.incomplete-{host}-{dead.pid}'),
               os.path.join(parent, f'.{name}.incomplete-{dead.pid}')]
  try:
    for folder in [live_dir, other_host] + dead_dirs:
      os.makedirs(folder)
    outputs.write_results(out, {'iou_rec': 0.5}, {'iou_rec': np.ones(2)},
                          lambda folder: [], overwrite=False)
    assert os.path.isdir(live_dir) and os.path.isdir(other_host)
    assert not any(os.path.exists(d) for d in dead_dirs)
    assert outputs.load_metrics(out) == {'iou_rec': 0.5}
  finally:
    sleeper.kill()
    sleeper.wait()


def test_folder_names_the_images_evaluated():
  assert outputs.images_named(None, 8) is None
  assert outputs.images_named(200, 8) is None  # The whole split.
  assert outputs.images_named(8, 8) is None
  assert outputs.images_named(3, 8) == 3
  with pytest.raises(ValueError, match='got -3'):
    outputs.images_named(-3, 8)
