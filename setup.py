"""Installs the model package `hpunet_jax`, lean, with extras.

`pip install .` gives the model, `hpunet_jax.load` and sampling. The extras
add the rest of the development stack, read from the sections of
requirements.txt: `[data]` (TFDS builders, input pipeline, image readers),
`[train]` (trainer, evaluation, figures; implies `[data]`), `[test]` (the
suite; implies both), `[all]` (all three), `[tensorboard]` (the viewer).

Only `hpunet_jax` is installed. The repository's other top-level folders,
`datasets/`, `eval/` and `experiments/`, are used from the repository root
(`python -m experiments.train ...`, `python -m pytest tests`), where Python
finds them first on `sys.path`. Installing them would put packages with these
generic names into site-packages, where `datasets` collides with Hugging
Face's `datasets`; this way both coexist in one environment (see
docs/install.md).
"""
import pathlib
import re

import setuptools

_HERE = pathlib.Path(__file__).parent


def _requirement_sections():
  """requirements.txt -> {'': core, 'data': [...], ...}: a line
  `# [name] ...` starts the section of extra `name`."""
  sections, name = {'': []}, ''
  for line in (_HERE / 'requirements.txt').read_text().splitlines():
    header = re.match(r'#\s*\[(\w+)\]', line)
    if header:
      name = header.group(1)
      sections[name] = []
      continue
    requirement = line.split('#')[0].strip()
    if requirement:
      sections[name].append(requirement)
  return sections


_SECTIONS = _requirement_sections()
_DATA = _SECTIONS['data']
_TRAIN = _DATA + _SECTIONS['train']
_TEST = _TRAIN + _SECTIONS['test']

setuptools.setup(
    name='hpunet_jax',
    version='0.1.0',
    description=('JAX/Haiku Hierarchical Probabilistic U-Net (Kohl et al. '
                 '2019) and the Probabilistic U-Net baseline.'),
    license='Apache-2.0',
    python_requires='>=3.10',
    packages=setuptools.find_packages(include=['hpunet_jax', 'hpunet_jax.*']),
    install_requires=_SECTIONS[''],
    extras_require={'data': _DATA, 'train': _TRAIN, 'test': _TEST,
                    'all': _TEST, 'tensorboard': _SECTIONS['tensorboard']},
)
