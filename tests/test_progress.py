"""The shared progress report: counts, steady-state rate, ETA, line output."""
import logging

import pytest

from hpunet_jax.runtime import progress


class _Clock:
  """A fake `time.monotonic` that the test advances by hand."""

  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


@pytest.fixture
def clock(monkeypatch):
  fake = _Clock()
  monkeypatch.setattr(progress.time, 'monotonic', fake)
  return fake


def _messages(caplog):
  return [r.getMessage() for r in caplog.records if r.name == 'absl']


def test_counts_rate_and_eta_exclude_the_warmup(clock, caplog):
  caplog.set_level(logging.INFO)
  report = progress.Progress('evaluating x:test', total=10, unit='images',
                             per_item={'samples': 100}, warmup_items=2,
                             every_seconds=0, use_tqdm=False)
  clock.now += 59.0  # The first batch compiles: 60 s for 2 images.
  report.update()
  clock.now += 1.0
  report.update()
  assert report.rate() is None and report.eta_seconds() is None
  clock.now += 4.0  # Then 2 images in 4 s: 0.5 images/s.
  report.update(2)
  assert report.rate() == pytest.approx(0.5)
  assert report.eta_seconds() == pytest.approx(12.0)  # 6 images left.
  clock.now += 12.0
  report.update(6)
  report.close()
  lines = _messages(caplog)
  assert lines[0] == ('evaluating x:test: 10 images (compiling and running '
                      'the first batch ...)')
  assert 'first 2 images done in 60.0 s (compilation included)' in lines[1]
  assert lines[2] == ('evaluating x:test: 4/10 images (40%), 0.5 images/s, '
                      '50 samples/s, ETA 0:00:12, elapsed 0:01:04')
  assert lines[-1].startswith('evaluating x:test: done, 10/10 images (100%), '
                              '0.5 images/s')
  assert 'ETA' not in lines[-1]


def test_lines_are_rate_limited_and_unknown_totals_have_no_eta(clock, caplog):
  caplog.set_level(logging.INFO)
  with progress.Progress('generating', unit='examples', every_seconds=5,
                         use_tqdm=False) as report:
    for _ in range(20):  # 20 examples, one per second.
      clock.now += 1.0
      report.update()
  lines = _messages(caplog)
  # The announcement, one line per 5 s (at 5, 10, 15, 20 s) and the end.
  assert len(lines) == 1 + 4 + 1, lines
  assert lines[2] == 'generating: 10 examples, 1 examples/s, elapsed 0:00:10'
  assert lines[-1] == ('generating: done, 20 examples, 1 examples/s, '
                       'elapsed 0:00:20')


def test_no_terminal_means_no_bar(monkeypatch):
  monkeypatch.setattr(progress.sys.stderr, 'isatty', lambda: False,
                      raising=False)
  assert not progress._use_tqdm()


def test_timed_logs_start_and_duration(clock, caplog):
  caplog.set_level(logging.INFO)
  with progress.timed('compiling the train step'):
    clock.now += 85.0
  assert _messages(caplog) == ['compiling the train step ...',
                               'compiling the train step: done in 85.0 s']


def test_format_duration():
  assert progress.format_duration(125.4) == '0:02:05'
  assert progress.format_duration(-3) == '0:00:00'


def test_data_set_build_reports_totals_and_no_download(tmp_path, caplog,
                                                       capsys):
  from datasets import tfds_utils  # pylint: disable=g-import-not-at-top
  caplog.set_level(logging.INFO)
  builder = tfds_utils.load_builder('synthetic_lesions', tmp_path, 'tiny')
  lines = _messages(caplog)
  for split, total in (('train', 16), ('validation', 8), ('test', 8)):
    assert (f'generating synthetic_lesions/tiny {split}: done, '
            f'{total}/{total} examples (100%)') in ' '.join(lines), lines
    assert builder.info.splits[split].num_examples == total
  captured = capsys.readouterr()
  assert 'Downloading' not in captured.out + captured.err
  assert 'downloaded' not in captured.out + captured.err
  assert 'Unknown size' not in captured.out + captured.err
