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
complete; `load_builder` also removes the directories it left empty.

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
import time
from typing import Callable, Iterator, Optional

from absl import logging
import tensorflow_datasets as tfds

from hpunet_jax.runtime import progress
from hpunet_jax.runtime import quiet_logs

_DATASETS_DIR = pathlib.Path(__file__).resolve().parent
FILE_FORMAT = 'array_record'


class UnknownDatasetError(ValueError):
  """No builder module `datasets/<name>/<name>_dataset_builder.py`."""


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
  builder = builder_class(name)(
      config=config, data_dir=None if data_dir is None else os.fspath(data_dir),
      file_format=FILE_FORMAT)
  if prepare and not _is_prepared(builder):
    download_config = tfds.download.DownloadConfig(
        manual_dir=None if manual_dir is None else os.fspath(manual_dir))
    try:
      with _reported_build(builder, name):
        builder.download_and_prepare(download_config=download_config)
    except BaseException:
      _remove_empty_dirs(pathlib.Path(builder.data_dir),
                         stop_at=pathlib.Path(builder.data_dir_root))
      raise
  return builder


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
  if split not in builder.info.splits:
    raise ValueError(f'{name}: no split {split!r}; available: '
                     f'{list(builder.info.splits)}')
  return builder.as_data_source(split)


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
