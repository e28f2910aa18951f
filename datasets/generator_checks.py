"""Spec checks shared by the synthetic data generators (lesions v1/v2, cells).

Each raises one ValueError naming the spec field and the bad value.
"""


def check_image_size(image_size: int, largest: int) -> None:
  """`image_size` (side of the square image, px) must be in [16, `largest`]."""
  if not 16 <= image_size <= largest:
    raise ValueError(
        f'image_size must be in [16, {largest}], got {image_size}')


def check_count_range(what: str, fewest: int, most: int, lowest: int,
                      highest: int | None = None) -> None:
  """`lowest <= fewest <= most (<= highest)` for `min_<what>`, `max_<what>`.

  Args:
    what: the counted thing as in the field names (`lesions`, `cells`).
    fewest: the spec's `min_<what>`.
    most: the spec's `max_<what>`.
    lowest: smallest allowed `min_<what>`.
    highest: largest allowed `max_<what>`; None = unbounded.
  """
  bound = '' if highest is None else f' <= {highest}'
  if not (lowest <= fewest <= most and (highest is None or most <= highest)):
    raise ValueError(f'need {lowest} <= min_{what} <= max_{what}{bound}, got '
                     f'{fewest}, {most}')


def check_lesion_outline(radius_range: tuple[float, float],
                         irregularity: float) -> None:
  """Base radius range (fraction of the image side) and outline wobble."""
  low, high = radius_range
  if not 0 < low <= high < 0.5:
    raise ValueError(f'radius_range must satisfy 0 < low <= high < 0.5, got '
                     f'{radius_range}')
  if not 0 <= irregularity < 1:
    raise ValueError(f'irregularity must be in [0, 1), got {irregularity}')


def check_num_graders(num_graders: int) -> None:
  """At least one grading stored per image."""
  if num_graders < 1:
    raise ValueError(f'num_graders must be >= 1, got {num_graders}')


def check_style_probs(style_probs: tuple[float, ...]) -> None:
  """Grader style probabilities: a distribution."""
  if min(style_probs) < 0 or abs(sum(style_probs) - 1) > 1e-6:
    raise ValueError(f'style_probs must be >= 0 and sum to 1, got '
                     f'{style_probs}')
