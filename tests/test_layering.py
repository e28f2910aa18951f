"""The layers import downward only: hpunet_jax <- datasets <- eval <- experiments."""
import ast
import pathlib

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_LAYERS = ('hpunet_jax', 'datasets', 'eval', 'experiments')


def _imported_top_level(path):
  """Top-level package names imported anywhere in a file (also inside functions)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
    if isinstance(node, ast.Import):
      names.update(alias.name.split('.')[0] for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names.add(node.module.split('.')[0])
  return names


@pytest.mark.parametrize('layer', _LAYERS)
def test_no_layer_imports_upward(layer):
  above = set(_LAYERS[_LAYERS.index(layer) + 1:])
  offenders = []
  for path in sorted((_ROOT / layer).rglob('*.py')):
    bad = _imported_top_level(path) & above
    if bad:
      offenders.append(f'{path.relative_to(_ROOT)} imports {sorted(bad)}')
  assert not offenders, '\n'.join(offenders)


def test_the_checker_sees_an_upward_import(tmp_path):
  bad = tmp_path / 'bad.py'
  bad.write_text('def f():\n  from experiments import train_lib\n')
  assert 'experiments' in _imported_top_level(bad)
