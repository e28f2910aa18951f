"""The `--out` folder of `experiments.predict`: new, empty, or its own.

An earlier prediction's files (the names `prediction_outputs.write_outputs`
writes) may be replaced; anything else in the folder makes predict refuse, so
that no stale `sample_XX` of another image sits beside the new ones and no
file of the user's is deleted.
"""
import os
import re
from typing import List


class OutputError(ValueError):
  """`--out` or `--num_samples` cannot be used."""


# Names `write_outputs` writes: only these may be cleared from `--out`.
_OUTPUT_NAME = re.compile(
    r'(sample_\d+(_colour)?\.png|mean_std\.png|std\.npy|mean_probs\.npy|'
    r'entropy\.(png|npy)|contact_sheet\.png)$')


def earlier_outputs(out_dir: str) -> List[str]:
  """The files of an earlier prediction in `out_dir` (to be replaced).

  Raises:
    OutputError: `out_dir` is a file, or holds anything else.
  """
  if not os.path.exists(out_dir):
    return []
  if not os.path.isdir(out_dir):
    raise OutputError(f'--out {out_dir} is a file; pass a folder.')
  names = sorted(os.listdir(out_dir))
  foreign = [n for n in names if not _OUTPUT_NAME.match(n) or
             not os.path.isfile(os.path.join(out_dir, n))]
  if foreign:
    raise OutputError(
        f'--out {out_dir} holds files predict did not write '
        f'({", ".join(foreign[:3])}{", ..." if len(foreign) > 3 else ""}); '
        'pass a new or empty folder.')
  return [os.path.join(out_dir, n) for n in names]
