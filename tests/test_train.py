"""The trainer end to end on tiny configs: logging, resume, SIGTERM, NaN stop,
two processes, and every task's data path."""
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tifffile

from datasets import pipeline
from datasets import tfds_utils
from eval import outputs
from hpunet_jax.runtime import checkpointing
from experiments import cityscapes
from experiments import lidc
from experiments import lidc_v1
from hpunet_jax.runtime import metric_writers
from experiments import snemi3d
from experiments import synthetic_cells
from experiments import synthetic_lesions
from experiments import train_lib
from tests import fixtures
from tests import helpers

_REPO = pathlib.Path(__file__).resolve().parents[1]
_STEPS = 4
# The smallest HPU-Net worth the name (3 levels, 4 channels, one latent
# level, one conv per res-block): compiling it dominates these tests.
_SMALL_HPUNET = {'channels_per_level': (4, 4, 4), 'latent_dims': (1,),
                 'convs_per_block': 1}


@pytest.fixture(scope='module')
def lesions_data_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds')
  tfds_utils.load_builder('synthetic_lesions', data_dir, 'tiny')
  return str(data_dir)


def _shrink(config):
  if config.model_type == 'hpunet':
    config.model.update(_SMALL_HPUNET)
  return config


def _lesions_config(data_dir, **overrides):
  config = _shrink(synthetic_lesions.get_config('tiny'))
  config.data.data_dir = data_dir
  for key, value in overrides.items():
    config[key] = value
  return config


def _records(workdir):
  """metrics.jsonl without the wall-clock keys."""
  return [{k: v for k, v in r.items() if k not in metric_writers.TIMING_KEYS}
          for r in metric_writers.read_metrics(str(workdir))]


def _flat(tree):
  return np.concatenate(
      [np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


@pytest.fixture(scope='module')
def straight_run(lesions_data_dir, tmp_path_factory):
  """4 uninterrupted steps, then the final evaluation on 2 images."""
  workdir = tmp_path_factory.mktemp('straight')
  config = _lesions_config(lesions_data_dir)
  config.eval.num_samples = 4
  config.eval.num_examples = 2
  config.eval.num_resamples = 10
  state = train_lib.train_and_evaluate(config, str(workdir))
  return workdir, state


def test_run_logs_checkpoints_and_evaluates(straight_run):
  workdir, state = straight_run
  assert int(state.step) == _STEPS
  records = metric_writers.read_metrics(str(workdir))
  assert [r['step'] for r in records] == list(range(1, _STEPS + 1))
  for key in ('loss', 'rec_mean', 'rec_sum', 'lambda', 'kl_0',
              'kl_sum', 'learning_rate', 'grad_norm', 'steps_per_sec'):
    assert all(np.isfinite(r[key]) for r in records), key
  assert records[0]['learning_rate'] == pytest.approx(1e-3)
  assert records[-1]['learning_rate'] == pytest.approx(5e-4)
  assert list((workdir / 'tensorboard').glob('events.out.tfevents.*'))
  assert json.loads((workdir / 'config.json').read_text())['seed'] == 0
  checkpointer = checkpointing.Checkpointer(str(workdir / 'checkpoints'))
  assert checkpointer.all_steps() == [2, 4]
  assert checkpointer.restore_config(4)['data']['name'] == 'synthetic_lesions'
  eval_dir = workdir / 'eval' / 'test' / 'step4_samples4_images2'
  metrics = json.loads((eval_dir / 'metrics.json').read_text())
  # Which parameters were evaluated, and the run's own record of its end.
  config_hash = json.loads((workdir / 'finished.json').read_text())[
      'config_hash']
  assert metrics['checkpoint_step'] == _STEPS
  assert metrics['config_hash'] == config_hash
  assert json.loads((workdir / 'config.0.json').read_text()) == json.loads(
      (workdir / 'config.json').read_text())


def test_restart_continues_exactly(straight_run, lesions_data_dir, tmp_path):
  straight_dir, straight_state = straight_run
  # First half, as if interrupted after step 2; then the same command again.
  train_lib.train_and_evaluate(
      _lesions_config(lesions_data_dir, num_train_steps=_STEPS // 2), tmp_path)
  resumed = train_lib.train_and_evaluate(_lesions_config(lesions_data_dir),
                                         tmp_path)
  np.testing.assert_array_equal(_flat(resumed.trainable),
                                _flat(straight_state.trainable))
  np.testing.assert_array_equal(_flat(resumed.opt_state),
                                _flat(straight_state.opt_state))
  np.testing.assert_array_equal(_flat(resumed.geco_state),
                                _flat(straight_state.geco_state))
  assert _records(tmp_path) == _records(straight_dir)


def test_mid_run_checkpoint_resumes_exactly(straight_run, lesions_data_dir,
                                            tmp_path):
  """The straight run's step-2 checkpoint, saved in the background while step
  3 reused the (donated) state buffers, resumes to the same end point."""
  straight_dir, straight_state = straight_run
  shutil.copytree(straight_dir / 'checkpoints' / '2',
                  tmp_path / 'checkpoints' / '2')
  resumed = train_lib.train_and_evaluate(_lesions_config(lesions_data_dir),
                                         tmp_path)
  np.testing.assert_array_equal(_flat(resumed.trainable),
                                _flat(straight_state.trainable))
  assert _records(tmp_path) == _records(straight_dir)[2:]


def test_restart_drops_records_after_the_last_checkpoint(tmp_path):
  """metrics.jsonl written past the checkpoint by a killed run is dropped."""
  writer = metric_writers.MetricWriter(str(tmp_path), start_step=0,
                                       total_steps=3)
  for step in (1, 2, 3):
    writer.write(step, {'loss': float(step)})
  writer.close()
  metric_writers.MetricWriter(str(tmp_path), start_step=2,
                              total_steps=3).close()
  assert [r['step'] for r in metric_writers.read_metrics(str(tmp_path))] == [
      1, 2]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(
    lesions_data_dir, tmp_path, monkeypatch):
  # Batch 1 is drawn once to read the shapes, so draw 4 is step 3's.
  helpers.poison_train_batches(monkeypatch, nan_draw=4)
  config = _lesions_config(lesions_data_dir, checkpoint_every_steps=1)
  with pytest.raises(train_lib.NonFiniteLossError, match='at step 3'):
    train_lib.train_and_evaluate(config, str(tmp_path))
  checkpointer = checkpointing.Checkpointer(str(tmp_path / 'checkpoints'))
  assert checkpointer.all_steps() == [1, 2]
  assert [r['step'] for r in metric_writers.read_metrics(str(tmp_path))] == [
      1, 2]


def _train_command(workdir, data_dir, *flags):
  return [sys.executable, '-m', 'experiments.train',
          '--config=experiments/synthetic_lesions.py:tiny',
          f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
          f'--config.compilation_cache_dir='
          f'{jax.config.jax_compilation_cache_dir or ""}',
          *[f'--config.model.{k}={v}'.replace(' ', '')
            for k, v in _SMALL_HPUNET.items()], *flags]


def test_sigterm_saves_and_restart_continues(lesions_data_dir, tmp_path):
  proc = subprocess.Popen(
      _train_command(tmp_path, lesions_data_dir,
                     '--config.num_train_steps=100000',
                     '--config.checkpoint_every_steps=100000'),
      cwd=_REPO, env=dict(os.environ, JAX_PLATFORMS='cpu'),
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 300
    while not metric_writers.read_metrics(str(tmp_path)):
      assert proc.poll() is None, proc.stderr.read()[-3000:]
      assert time.monotonic() < deadline, 'training did not start'
      time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, stderr[-3000:]
  stopped_at = checkpointing.Checkpointer(
      str(tmp_path / 'checkpoints')).latest_step()
  assert stopped_at is not None and 1 <= stopped_at < 100000
  assert f'Stopped at step {stopped_at}' in stderr
  # The same run continues from there.
  state = train_lib.train_and_evaluate(
      _lesions_config(lesions_data_dir, num_train_steps=stopped_at + 2),
      str(tmp_path))
  assert int(state.step) == stopped_at + 2
  steps = [r['step'] for r in metric_writers.read_metrics(str(tmp_path))]
  assert steps == list(range(1, stopped_at + 3))


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_processes_train_together(lesions_data_dir, tmp_path):
  address = f'localhost:{_free_port()}'
  procs = [subprocess.Popen(
      _train_command(tmp_path, lesions_data_dir, '--config.num_train_steps=2',
                     f'--coordinator_address={address}', '--num_processes=2',
                     f'--process_id={i}'),
      cwd=_REPO, env=dict(os.environ, JAX_PLATFORMS='cpu'),
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  try:
    errors = [p.communicate(timeout=300)[1] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, stderr in zip(procs, errors):
    assert p.returncode == 0, stderr[-3000:]
  assert 'over 2 devices, 2 process(es)' in errors[0]
  loader = json.loads((tmp_path / 'checkpoints' / '2' / 'loader' /
                       'metadata').read_text())
  assert len(loader) == 2 and loader[0] != loader[1]  # One shard each.
  assert [r['step'] for r in metric_writers.read_metrics(str(tmp_path))] == [
      1, 2]


def _write_snemi3d(root):
  """A 100-slice 256x256 stack: the smallest the 'paper' config accepts."""
  rng = np.random.default_rng(0)
  labels = np.kron(rng.integers(0, 40, (100, 16, 16)),
                   np.ones((1, 16, 16))).astype(np.uint16)
  em = rng.integers(0, 256, labels.shape, dtype=np.uint8)
  root.mkdir()
  tifffile.imwrite(root / 'train-input.tif', em, photometric='minisblack')
  tifffile.imwrite(root / 'train-labels.tif', labels, photometric='minisblack')


@pytest.mark.parametrize('task', ['synthetic_cells', 'lesions_spunet', 'lidc',
                                  'lidc_v1', 'snemi3d', 'cityscapes'])
def test_every_task_trains(task, tmp_path, monkeypatch):
  manual_dir = tmp_path / 'raw'
  if task == 'synthetic_cells':
    config = synthetic_cells.get_config('tiny')
  elif task == 'lesions_spunet':
    config = synthetic_lesions.get_config('spunet,tiny')
  elif task == 'lidc':
    config = lidc.get_config('tiny')
    fixtures.write_lidc(manual_dir)
  elif task == 'lidc_v1':
    config = lidc_v1.get_config('tiny')
    fixtures.write_lidc_v1_pickle(manual_dir)
  elif task == 'snemi3d':
    config = snemi3d.get_config('tiny')
    _write_snemi3d(manual_dir)
  else:
    config = cityscapes.get_config('tiny')
    # The 'paper' config needs its three validation cities.
    monkeypatch.setattr(fixtures, 'CITYSCAPES_LAYOUT', {
        'train': {'aachen': 2, 'darmstadt': 1, 'moenchengladbach': 1,
                  'ulm': 1},
        'val': {'frankfurt': 1}})
    fixtures.write_cityscapes(manual_dir)
  config.data.data_dir = str(tmp_path / 'tfds')
  config.data.manual_dir = str(manual_dir) if manual_dir.exists() else None
  config.num_train_steps = 2
  _shrink(config)
  # A tiny final evaluation: every task's metrics run end to end.
  config.eval.update(num_samples=4, num_examples=2, num_resamples=10,
                     num_figure_examples=1)
  state = train_lib.train_and_evaluate(config, str(tmp_path / 'run'))
  assert int(state.step) == 2
  records = metric_writers.read_metrics(str(tmp_path / 'run'))
  assert [r['step'] for r in records] == [1, 2]
  assert all(np.isfinite(r['loss']) for r in records)
  # Named by what was evaluated: 'imagesall' where 2 cover the split.
  eval_dir = outputs.final_results_dir(str(tmp_path / 'run'), config)
  covered = pipeline.num_eval_examples(config.data, 'test') <= 2
  assert os.path.basename(eval_dir) == (
      'step2_samples4_' + ('imagesall' if covered else 'images2'))
  summary = json.loads(
      (pathlib.Path(eval_dir) / 'metrics.json').read_text())
  expected = {'lesions_spunet': {'iou_rec', 'ged_4', 'hm_iou', 'exact_ged',
                                 'oracle'},
              'lidc': {'iou_rec', 'ged_4', 'hm_iou'},
              'lidc_v1': {'iou_rec', 'ged_4', 'hm_iou', 'diversity_4', 'ncc',
                          'ece', 'protocol'},
              'synthetic_cells': {'iou_rec', 'rand_error'},
              'snemi3d': {'iou_rec', 'rand_error'},
              'cityscapes': {'iou_rec', 'rand_error', 'ap', 'ap50'}}[task]
  assert expected <= set(summary), summary
  # The Cityscapes fixture has one test image.
  assert summary['num_images'] == (1 if task == 'cityscapes' else 2)
