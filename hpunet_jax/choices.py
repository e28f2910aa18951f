"""The check of a string setting against its allowed values."""
from typing import Any, Sequence


def check_choice(field: str, value: Any, allowed: Sequence[Any]) -> None:
  """Raises ValueError naming `field` (e.g. 'config.compute_dtype') unless
  `value` is in `allowed`."""
  if value not in allowed:
    raise ValueError(f'{field} must be one of {allowed}, got {value!r}.')
