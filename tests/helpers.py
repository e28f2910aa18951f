"""Small helpers shared by several test modules."""
import numpy as np

from datasets import pipeline


class PoisonedIterator:
  """Wraps a train iterator; its draw number `nan_draw` (1-based) has a NaN
  image. The trainer's draw 1 only fixes the shapes, so draw `s + 1` is the
  batch of step `s`."""

  def __init__(self, iterator, nan_draw: int):
    self._iterator, self._nan_draw, self._count = iterator, nan_draw, 0

  def __next__(self):
    batch = next(self._iterator)
    self._count += 1
    if self._count == self._nan_draw:
      batch = dict(batch, image=np.full_like(batch['image'], np.nan))
    return batch

  def get_state(self):
    return self._iterator.get_state()

  def set_state(self, state):
    self._iterator.set_state(state)


def poison_train_batches(monkeypatch, nan_draw: int) -> None:
  """Makes `pipeline.make_train_iterator` return `PoisonedIterator`s."""
  make_iterator = pipeline.make_train_iterator
  monkeypatch.setattr(
      pipeline, 'make_train_iterator',
      lambda *a, **k: PoisonedIterator(make_iterator(*a, **k), nan_draw))


def tiny_lesion_run(tmp_path, variant: str):
  """The study's tiny one-seed options for one synthetic-lesions `variant`,
  its config for seed 0 and its run folder: `(options, config, run_dir)`."""
  from experiments.study import options as study_options  # pylint: disable=g-import-not-at-top
  from experiments.study import runs as study_runs  # pylint: disable=g-import-not-at-top
  options = study_options.StudyOptions(
      workdir=str(tmp_path / 'runs'), seeds=1, lesion_variants=(variant,),
      cell_variants=(), tiny=True, data_dir=str(tmp_path / 'tfds')).resolved()
  config = study_options.make_config(study_options.LESIONS, variant, 0,
                                     options)
  run_dir = study_runs.run_dir_of(options, study_options.LESIONS, variant, 0)
  return options, config, run_dir
