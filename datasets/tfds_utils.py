"""Builds and reads this repository's TFDS data sets without TensorFlow.

Every data set lives in `datasets/<name>/<name>_dataset_builder.py` as a class
`Builder` (a `tfds.core.GeneratorBasedBuilder`). They are written as
`array_record` and read back through `builder.as_data_source(split)`: random
access, numpy out, no TensorFlow. Images go in as PNG bytes (TFDS's numpy
image encoder needs TensorFlow, its PNG decoder falls back to Pillow); label
arrays are `tfds.features.Tensor`s, which encode and decode with numpy alone.

TFDS prepares into `<data_dir>/<name>/<config>/incomplete.<random>_<version>`
and renames it only after every split is written and the metadata saved, so a
build that fails leaves no data set behind that could later be read as
complete; `load_builder` also removes the directories it left empty. Builds
of one data set config take turns on a lock file in its folder; a build
killed outright leaves its `incomplete.*` folder, which the next
`load_builder` of that config removes once no build holds the lock (builds
by other tools, which take no lock, cannot be told apart).

Opening a data set checks it cheaply (`DataSetError`, one line naming the
file and how to rebuild it): metadata (`dataset_info.json`) that does not
parse or lists no splits, and shards whose record count (read from each
array_record file's footer) differs from the metadata's, as after a
truncated copy or a full disk.

While building, each split reports its examples generated of the total
(`hpunet_jax.runtime.progress`: count, rate, ETA) in place of TFDS's bars,
which know no total, and TFDS's "Downloading and preparing dataset Unknown
size" banner is replaced by one line saying what is generated where.
"""
import contextlib
import functools
import importlib
import os
import pathlib
import shutil
import time
from typing import Callable, Iterator, Optional

from absl import logging
import tensorflow_datasets as tfds

from hpunet_jax.runtime import progress
from hpunet_jax.runtime import quiet_logs
from hpunet_jax.runtime import workdir_lock

_DATASETS_DIR = pathlib.Path(__file__).resolve().parent
FILE_FORMAT = 'array_record'
# TFDS's prefix of a build's temporary folder.
INCOMPLETE_PREFIX = 'incomplete.'
BUILD_LOCK_FILE = '.build.lock'


class UnknownDatasetError(ValueError):
  """No builder module `datasets/<name>/<name>_dataset_builder.py`."""


class DataSetError(ValueError):
  """A built data set is damaged (the message names the file and how to
  rebuild it)."""


def _rebuild_hint(folder) -> str:
  return (f'delete {folder} and run again: the data set is rebuilt on first '
          'use (a real data set from config.data.manual_dir).')


def _first_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return type(error).__name__ + (f': {lines[0]}' if lines else '')


def _version_dir(cls, name: str, data_dir, config: Optional[str]
                 ) -> pathlib.Path:
  """`<data_dir>/<name>/<config>/<version>`, where `cls` keeps a build."""
  root = pathlib.Path(os.fspath(data_dir) if data_dir is not None
                      else tfds.core.constants.DATA_DIR).expanduser()
  if config is None:
    config = cls.DEFAULT_BUILDER_CONFIG_NAME or (
        cls.BUILDER_CONFIGS[0].name if cls.BUILDER_CONFIGS else None)
  folder = root / name / config if config else root / name
  return folder / str(cls.VERSION)


def _new_builder(name: str, data_dir, config: Optional[str]
                 ) -> tfds.core.DatasetBuilder:
  """The builder; a built data set's unreadable metadata is a
  DataSetError."""
  cls = builder_class(name)
  try:
    return cls(config=config,
               data_dir=None if data_dir is None else os.fspath(data_dir),
               file_format=FILE_FORMAT)
  except Exception as e:  # pylint: disable=broad-except
    folder = _version_dir(cls, name, data_dir, config)
    info = folder / 'dataset_info.json'
    if not info.exists():
      raise
    raise DataSetError(f'{info} cannot be read ({_first_line(e)}); '
                       f'{_rebuild_hint(folder)}') from None


def available_datasets() -> list[str]:
  """Names of the data sets with a builder module in `datasets/`."""
  modules = _DATASETS_DIR.glob('*/*_dataset_builder.py')
  return sorted(p.parent.name for p in modules
                if p.name == f'{p.parent.name}_dataset_builder.py')


def builder_class(name: str) -> type[tfds.core.DatasetBuilder]:
  """The `Builder` class of `datasets/<name>/<name>_dataset_builder.py`."""
  if name not in available_datasets():
    raise UnknownDatasetError(
        f'no data set {name!r}: expected {_DATASETS_DIR}/{name}/'
        f'{name}_dataset_builder.py; available: {available_datasets()}')
  module = importlib.import_module(f'datasets.{name}.{name}_dataset_builder')
  return module.Builder


def load_builder(name: str,
                 data_dir: str | os.PathLike | None = None,
                 config: str | None = None,
                 manual_dir: str | os.PathLike | None = None,
                 prepare: bool = True) -> tfds.core.DatasetBuilder:
  """Instantiates a data set's builder and prepares it if it is not yet built.

  Args:
    name: folder name under `datasets/`, e.g. 'synthetic_lesions'.
    data_dir: where prepared data sets live; None = TFDS default
      (`$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
    config: builder config name; None = the builder's default config.
    manual_dir: folder with manually downloaded raw files (real data sets).
    prepare: build the data set if it is not there yet.

  Returns:
    The builder, writing/reading array_record.
  """
  builder = _new_builder(name, data_dir, config)
  config_dir = pathlib.Path(builder.data_dir).parent
  if _is_prepared(builder) or not prepare:
    with _remove_leftovers(config_dir, wait=False):
      return builder
  download_config = tfds.download.DownloadConfig(
      manual_dir=None if manual_dir is None else os.fspath(manual_dir))
  try:
    # Another process building this config: wait, then use its build.
    with _remove_leftovers(config_dir, wait=True):
      builder = _new_builder(name, data_dir, config)
      if not _is_prepared(builder):
        with _reported_build(builder, name):
          builder.download_and_prepare(download_config=download_config)
  except BaseException:
    _remove_empty_dirs(pathlib.Path(builder.data_dir),
                       stop_at=pathlib.Path(builder.data_dir_root))
    raise
  return builder


def _leftovers(config_dir: pathlib.Path) -> list[pathlib.Path]:
  if not config_dir.is_dir():
    return []
  return sorted(p for p in config_dir.iterdir()
                if p.name.startswith(INCOMPLETE_PREFIX) and p.is_dir())


@contextlib.contextmanager
def _remove_leftovers(config_dir: pathlib.Path, wait: bool):
  """Holds the build lock of `config_dir` (waiting for it with `wait`,
  else only if free) and removes the `incomplete.*` folders of builds that
  are gone; without the lock they are only named in a warning."""
  leftovers = _leftovers(config_dir)
  if not wait and not leftovers:
    yield
    return
  lock = workdir_lock.SettingsLock(config_dir / BUILD_LOCK_FILE,
                                   f'building {config_dir}')
  try:
    locked = lock.acquire(wait=wait)
    unknown = lock.unsupported
  except OSError:  # Read-only: whether a build runs cannot be known.
    locked, unknown = False, True
  try:
    leftovers = _leftovers(config_dir)
    names = ', '.join(str(p) for p in leftovers)
    if leftovers and locked:
      for folder in leftovers:
        shutil.rmtree(folder, ignore_errors=True)
      logging.warning('Removed %s, left by an interrupted build.', names)
    elif leftovers and unknown:
      logging.warning('%s: left by an interrupted build unless one is '
                      'running; delete them once none is.', names)
    yield  # (Not locked and not unknown: a live build holds the lock.)
  finally:
    lock.release()


def split_total(builder: tfds.core.DatasetBuilder,
                split: str) -> Optional[int]:
  """Examples a split will have, when the builder config says
  (`num_<split>`, the generated sets); None otherwise (raw files)."""
  total = getattr(builder.builder_config, f'num_{split}', None)
  return int(total) if isinstance(total, int) else None


def _counted(examples, start_report: Callable[[], progress.Progress]
             ) -> Iterator:
  """Yields `examples`, counting them from the first one TFDS asks for
  (splits are generated one after the other); logs the end."""
  with start_report() as report:
    for example in examples:
      yield example
      report.update()
  logging.info('%s: shuffling and writing %d examples ...', report.what,
               report.count)


@contextlib.contextmanager
def _reported_build(builder: tfds.core.DatasetBuilder, name: str):
  """Progress per split while TFDS builds; TFDS's own bars and banners off.

  Wraps the builder's `_split_generators` and silences its
  `_log_download_bytes` / `_log_download_done` (TFDS methods that print a
  download banner, meaningless for generated data), on this instance only.
  """
  config_name = getattr(builder.builder_config, 'name', None) or 'default'
  label = f'{name}/{config_name}'
  original = builder._split_generators  # pylint: disable=protected-access

  def split_generators(dl_manager):
    generators = original(dl_manager)
    if not isinstance(generators, dict):
      return generators  # Legacy list form: left as TFDS reports it.
    return {split: _counted(examples, functools.partial(
        progress.Progress, f'generating {label} {split}',
        total=split_total(builder, split), unit='examples'))
            for split, examples in generators.items()}

  quiet_logs.quiet_libraries()  # TFDS's per-shard INFO lines.
  builder._split_generators = split_generators  # pylint: disable=protected-access
  builder._log_download_bytes = lambda: None  # pylint: disable=protected-access
  builder._log_download_done = lambda: None  # pylint: disable=protected-access
  logging.info('Building data set %s into %s (once; later runs reuse it).',
               label, builder.data_dir_root)
  start = time.monotonic()
  tfds.display_progress_bar(False)
  try:
    yield
  finally:
    tfds.display_progress_bar(True)
    del builder._split_generators  # pylint: disable=protected-access
    del builder._log_download_bytes  # pylint: disable=protected-access
    del builder._log_download_done  # pylint: disable=protected-access
  logging.info('Built %s in %s: %s', label,
               progress.format_duration(time.monotonic() - start),
               builder.data_dir)


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
  return pathlib.Path(builder.data_dir, 'dataset_info.json').exists()


def _remove_empty_dirs(path: pathlib.Path, stop_at: pathlib.Path):
  """Removes `path` and its parents up to (excluding) `stop_at` while empty."""
  path, stop_at = path.resolve(), stop_at.resolve()
  while path != stop_at and stop_at in path.parents:
    try:
      path.rmdir()
    except OSError:  # Not empty, or not there: leave it.
      if path.exists():
        return
    path = path.parent


def data_source(name: str,
                split: str,
                data_dir: str | os.PathLike | None = None,
                config: str | None = None,
                manual_dir: str | os.PathLike | None = None):
  """Random-access source of decoded examples (dicts of numpy) of one split.

  Builds the data set first if needed (see `load_builder`).

  Returns:
    A `tfds` `ArrayRecordDataSource`: `len(source)`, `source[i]` -> dict.
  """
  builder = load_builder(name, data_dir, config, manual_dir)
  if not builder.info.splits:
    raise DataSetError(
        f'{pathlib.Path(builder.data_dir, "dataset_info.json")} lists no '
        f'splits; {_rebuild_hint(builder.data_dir)}')
  if split not in builder.info.splits:
    raise ValueError(f'{name}: no split {split!r}; available: '
                     f'{list(builder.info.splits)}')
  check_shards(builder, split)
  return builder.as_data_source(split)


def check_shards(builder: tfds.core.DatasetBuilder, split: str) -> None:
  """Raises DataSetError unless every array_record shard of `split` holds
  the records the metadata lists (each file's footer is read, no record)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  info = builder.info.splits[split]
  for path, expected in zip(info.filepaths, info.shard_lengths):
    path = pathlib.Path(os.fspath(path))
    if not path.exists():
      raise DataSetError(f'{path} is missing; '
                         f'{_rebuild_hint(builder.data_dir)}')
    try:
      reader = array_record_module.ArrayRecordReader(str(path))
    except Exception as e:  # pylint: disable=broad-except
      raise DataSetError(f'{path} cannot be opened ({_first_line(e)}); '
                         f'{_rebuild_hint(builder.data_dir)}') from None
    found = reader.num_records() if reader.ok() else None
    try:
      reader.close()
    except RuntimeError:  # A reader that failed raises its status again.
      pass
    if found != expected:
      held = ('its footer cannot be read' if found is None else
              f'it holds {found} of the {expected} records its '
              'dataset_info.json lists')
      raise DataSetError(f'{path} is truncated or damaged: {held}; '
                         f'{_rebuild_hint(builder.data_dir)}')


def main(argv=None):
  """`python -m datasets.tfds_utils NAME [--config C] [--data_dir D] ...`.

  Builds a data set. (The `tfds build` command line imports TensorFlow at
  start-up, so it cannot run in this TensorFlow-free environment.)
  """
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
  parser.add_argument('name', choices=available_datasets())
  parser.add_argument('--config', default=None, help='builder config name')
  parser.add_argument('--data_dir', default=None, help='TFDS data dir')
  parser.add_argument('--manual_dir', default=None,
                      help='raw files of a real data set')
  args = parser.parse_args(argv)
  builder = load_builder(args.name, args.data_dir, args.config, args.manual_dir)
  config_name = getattr(builder.builder_config, 'name', None) or 'default'
  print(f'{args.name}/{config_name}: {builder.data_dir}')
  for split, info in builder.info.splits.items():
    print(f'  {split}: {info.num_examples} examples')


if __name__ == '__main__':
  main()
