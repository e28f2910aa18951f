"""Bad inputs are one line naming the value or file, before any work:
config values on the training command line, run_metrics' counts, damaged
or half-built data sets, sample counts that cannot fit in memory."""
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from datasets import pipeline
from datasets import tfds_utils
from eval import sample_memory
from hpunet_jax.runtime import workdir_lock
from hpunet_jax.runtime import xla_options

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CELLS = 'experiments/synthetic_cells.py:tiny'


def _run(module, *args, timeout=300):
  return subprocess.run(
      [sys.executable, '-m', module, *args], cwd=REPO_ROOT,
      env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True,
      text=True, timeout=timeout, check=False)


def _one_line_error(run) -> str:
  assert run.returncode == 1, run.stderr[-3000:]
  assert 'Traceback' not in run.stderr, run.stderr[-3000:]
  return run.stderr.strip().splitlines()[-1]


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp('tfds')
  tfds_utils.load_builder('synthetic_cells', directory, 'tiny')
  return directory


def _damaged_copy(data_dir, tmp_path):
  """A copy of the built data set and its version folder."""
  copy = tmp_path / 'tfds'
  shutil.copytree(data_dir, copy)
  return copy, copy / 'synthetic_cells' / 'tiny' / '1.0.0'


def _cells_data(data_dir):
  return dict(name='synthetic_cells', builder_config='tiny',
              data_dir=str(data_dir), manual_dir=None, train_split='train',
              num_instance_ids=5)


# Config values: refused when the config is read, nothing written.


@pytest.mark.parametrize('override, message', [
    ('--config.optimizer.learning_rates=(nan,nan)',
     "train: config.optimizer.learning_rates must be finite numbers > 0 "
     '(e.g. --config.optimizer.learning_rates="(1e-4, 5e-5)"), got '
     "('(nan,nan)',)."),
    ('--config.loss.top_k_fraction=2',
     'train: config.loss.top_k_fraction must be a number in [0, 1], got 2.0.'),
    ('--config.loss.top_k_fraction=-0.1',
     'train: config.loss.top_k_fraction must be a number in [0, 1], got '
     '-0.1.'),
    (('--config.loss.geco_multiplier=multiplicative',
      '--config.loss.geco_multiplier_rate=0'),
     'train: config.loss.geco_multiplier_rate must be a finite number > 0 '
     "for the 'multiplicative' rule, got 0.0."),
    (('--config.loss.geco_multiplier=multiplicative',
      '--config.loss.geco_multiplier_rate=0.02',
      '--config.loss.geco_multiplier_rate_down=-0.1'),
     'train: config.loss.geco_multiplier_rate_down must be a finite number '
     "> 0 for the 'multiplicative' rule, got -0.1."),
])
def test_config_values_are_refused_before_the_workdir_is_touched(
    tmp_path, override, message):
  workdir = tmp_path / 'run'
  run = _run('experiments.train', f'--config={CELLS}', f'--workdir={workdir}',
             f'--config.data.data_dir={tmp_path / "tfds"}',
             *([override] if isinstance(override, str) else override))
  assert _one_line_error(run) == message
  assert not workdir.exists() and not (tmp_path / 'tfds').exists()


# run_metrics' counts: checked before the checkpoint is restored.


@pytest.mark.parametrize('flag, message', [
    ('--num_samples=0', '--num_samples=0: the number of samples per image '
     'must be >= 1.'),
    ('--num_samples=-5', '--num_samples=-5: the number of samples per image '
     'must be >= 1.'),
    ('--num_examples=-3', '--num_examples=-3: the number of images must be '
     '>= 1, or 0 for the whole split.'),
])
def test_run_metrics_counts_are_checked_before_the_restore(tmp_path, flag,
                                                           message):
  # No run there: a restore would fail with 'No checkpoints in ...'.
  run = _run('eval.run_metrics', f'--workdir={tmp_path / "none"}', flag)
  assert _one_line_error(run) == f'run_metrics: {message}'


# Damaged data sets: one line naming the file and the rebuild.


def test_truncated_shard_is_named_when_the_data_set_opens(data_dir,
                                                          tmp_path):
  copy, version_dir = _damaged_copy(data_dir, tmp_path)
  shard = version_dir / 'synthetic_cells-train.array_record-00000-of-00001'
  with open(shard, 'r+b') as f:
    f.truncate(os.path.getsize(shard) // 2)
  rebuild = f'delete {version_dir} and run again'
  with pytest.raises(tfds_utils.DataSetError,
                     match=f'{shard} is truncated or damaged: its footer '
                     f'cannot be read; {rebuild}'):
    pipeline.make_train_iterator(_cells_data(copy), batch_size=2, seed=0)
  # The other splits are whole: evaluation data still opens.
  assert pipeline.num_eval_examples(_cells_data(copy), 'test') == 8
  run = _run('experiments.train', f'--config={CELLS}',
             f'--workdir={tmp_path / "run"}',
             f'--config.data.data_dir={copy}')
  assert _one_line_error(run).startswith(
      f'train: {shard} is truncated or damaged: its footer cannot be read; '
      f'{rebuild}')
  assert not (tmp_path / 'run' / 'checkpoints').exists()


def test_shard_missing_records_is_named(data_dir, tmp_path):
  copy, version_dir = _damaged_copy(data_dir, tmp_path)
  # The test split's file in place of the train split's (8 of 16 records).
  shard = version_dir / 'synthetic_cells-train.array_record-00000-of-00001'
  shutil.copyfile(
      version_dir / 'synthetic_cells-test.array_record-00000-of-00001', shard)
  with pytest.raises(tfds_utils.DataSetError,
                     match=f'{shard} is truncated or damaged: it holds 8 of '
                     'the 16 records its dataset_info.json lists'):
    tfds_utils.data_source('synthetic_cells', 'train', copy, 'tiny')
  shard.unlink()
  with pytest.raises(tfds_utils.DataSetError, match=f'{shard} is missing'):
    tfds_utils.data_source('synthetic_cells', 'train', copy, 'tiny')


@pytest.mark.parametrize('content', ['', '{"splits": [', '{}'])
def test_damaged_dataset_info_is_one_line(data_dir, tmp_path, content):
  copy, version_dir = _damaged_copy(data_dir, tmp_path)
  info = version_dir / 'dataset_info.json'
  info.write_text(content)
  with pytest.raises(tfds_utils.DataSetError, match=str(info)) as error:
    tfds_utils.data_source('synthetic_cells', 'test', copy, 'tiny')
  assert f'delete {version_dir} and run again' in str(error.value)
  assert '\n' not in str(error.value)
  if content == '':
    run = _run('experiments.train', f'--config={CELLS}',
               f'--workdir={tmp_path / "run"}',
               f'--config.data.data_dir={copy}')
    assert _one_line_error(run).startswith(f'train: {info} cannot be read')


def test_leftovers_of_a_dead_build_go_and_a_live_build_keeps_its_own(
    data_dir, tmp_path):
  copy, version_dir = _damaged_copy(data_dir, tmp_path)
  leftover = version_dir.parent / 'incomplete.ABC123_1.0.0'
  leftover.mkdir()
  (leftover / 'part.array_record').write_bytes(b'x' * 1000)
  # A live build holds the config's build lock: its folder stays.
  holder = subprocess.Popen(
      [sys.executable, '-c',
       'import sys, time\n'
       'from hpunet_jax.runtime import workdir_lock\n'
       f'lock = workdir_lock.SettingsLock({str(version_dir.parent)!r} + '
       f'"/{tfds_utils.BUILD_LOCK_FILE}", "building")\n'
       'assert lock.acquire()\n'
       'print("locked", flush=True)\n'
       'time.sleep(120)\n'],
      cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    tfds_utils.load_builder('synthetic_cells', copy, 'tiny')
    assert leftover.exists()
  finally:
    holder.kill()
    holder.wait()
  # Its process gone, the next open removes it (and no lock file remains).
  tfds_utils.load_builder('synthetic_cells', copy, 'tiny')
  assert not leftover.exists()
  assert sorted(p.name for p in version_dir.parent.iterdir()) == ['1.0.0']


def test_an_interrupted_build_is_cleaned_up_by_the_next(tmp_path):
  # The build killed outright: TFDS's temporary folder stays behind.
  script = ('import contextlib, os\n'
            'from datasets import tfds_utils\n'
            'from tensorflow_datasets.core import utils\n'
            'original = utils.incomplete_dir\n'
            '@contextlib.contextmanager\n'
            'def killed(*args, **kwargs):\n'
            '  with original(*args, **kwargs) as tmp:\n'
            '    open(os.path.join(tmp, "partial"), "w").write("x")\n'
            '    os._exit(9)  # As SIGKILL: no cleanup runs.\n'
            '    yield tmp\n'
            'utils.incomplete_dir = killed\n'
            f'tfds_utils.load_builder("synthetic_cells", {str(tmp_path)!r}, '
            '"tiny")\n')
  subprocess.run([sys.executable, '-c', script], cwd=REPO_ROOT,
                 env=dict(os.environ, JAX_PLATFORMS='cpu'), timeout=300,
                 check=False, capture_output=True)
  config_dir = tmp_path / 'synthetic_cells' / 'tiny'
  assert [p.name for p in config_dir.iterdir()
          if p.name.startswith('incomplete.')], list(config_dir.iterdir())
  tfds_utils.load_builder('synthetic_cells', tmp_path, 'tiny')
  assert sorted(p.name for p in config_dir.iterdir()) == ['1.0.0']


# Sample counts: the memory they need, before sampling.


def test_sample_memory_names_the_largest_count_that_fits():
  budget = sample_memory.Budget(sample_bytes=8 * 64 * 64 * 8, batch_size=8,
                                image_hw=(64, 64), lesions=True,
                                host_bytes=2**30)
  largest = budget.largest_fitting()
  assert budget.fits(largest) and not budget.fits(largest + 1)
  assert budget.host_needed_bytes(largest) <= 2**30
  with pytest.raises(sample_memory.SampleMemoryError,
                     match=r'^100000 samples per image need at least 173\.4 '
                     r'GiB of memory \(8 images of 64x64 sampled at once and '
                     r'the 100000 x 100000 IoU matrices of GED\^2\), 1\.0 '
                     f'GiB is free: at most {largest} samples per image '
                     r'fit\.$'):
    budget.check(100000)
  budget.check(largest)
  # An accelerator's memory bounds the samples it holds.
  small_device = sample_memory.Budget(1000, 1, (10, 10), False,
                                      host_bytes=10**9, device_bytes=10**6)
  assert small_device.largest_fitting() == 1000
  with pytest.raises(sample_memory.SampleMemoryError,
                     match='of accelerator memory'):
    small_device.check(1001)


def test_bytes_per_sample_come_from_the_sampler_shapes():
  def sampler(images, num_samples):  # Labels and a per-sample float map.
    labels = jnp.zeros((num_samples,) + images.shape[:3], jnp.int32)
    probs = jnp.zeros((num_samples,) + images.shape[:3] + (2,), jnp.float32)
    return labels, probs, jnp.mean(probs, axis=0)
  images = jnp.zeros((3, 5, 7, 1))
  # Jitted with compile options, as the evaluator's sampler is.
  jitted = jax.jit(sampler, static_argnums=1,
                   **xla_options.jit_kwargs(eigen_conv=True))
  assert sample_memory.sampled_bytes_per_sample(jitted, images) == (
      3 * 5 * 7 * (4 + 2 * 4))


def test_settings_lock_is_removed_and_not_taken_twice(tmp_path):
  path = tmp_path / 'x.lock'
  first = workdir_lock.SettingsLock(path, 'a test')
  assert first.acquire()
  assert not workdir_lock.SettingsLock(path, 'a test').acquire(wait=False)
  first.release()
  assert not path.exists()
  with workdir_lock.SettingsLock(path, 'a test'):
    assert path.exists()
  assert not path.exists()


def test_an_evaluation_that_cannot_fit_is_refused_before_training(
    data_dir, tmp_path):
  """The final evaluation's memory check runs before the first step, so a
  sample count that cannot fit costs no training."""
  workdir = tmp_path / 'run'
  run = _run('experiments.train', f'--config={CELLS}', f'--workdir={workdir}',
             f'--config.data.data_dir={data_dir}',
             '--config.eval.num_samples=100000000000')
  line = _one_line_error(run)
  assert line.startswith('train: 100000000000 samples per image need at '
                         'least '), line
  assert 'samples per image fit.' in line
  assert not (workdir / 'metrics.jsonl').exists()
  assert not (workdir / 'checkpoints').exists() or not any(
      (workdir / 'checkpoints').iterdir())


def test_an_empty_split_is_named_by_the_memory_check_and_the_run(
    monkeypatch):
  from eval import evaluator  # pylint: disable=g-import-not-at-top
  from experiments import synthetic_lesions  # pylint: disable=g-import-not-at-top
  from hpunet_jax import models  # pylint: disable=g-import-not-at-top
  config = synthetic_lesions.get_config('tiny')
  model = models.make_model(config.model_type, config.model.to_dict())
  monkeypatch.setattr(pipeline, 'eval_examples',
                      lambda *args, **kwargs: iter(()))
  runner = evaluator.Evaluator(config, model)
  for call in (lambda: runner.check_memory(None, 'validation', 4),
               lambda: runner.run(None, 'validation', 4)):
    with pytest.raises(evaluator.EvalSettingsError,
                       match="Split 'validation' of synthetic_lesions has "
                             'no examples'):
      call()
