"""Installs the model package `hpunet_jax` and the run-time dependencies.

Only `hpunet_jax` is installed. The repository's other top-level folders,
`datasets/`, `eval/` and `experiments/`, are used from the repository root
(`python -m experiments.train ...`, `python -m pytest tests`), where Python
finds them first on `sys.path`. Installing them would put packages with these
generic names into site-packages, where `datasets` collides with Hugging
Face's `datasets`; this way both coexist in one environment (see the README,
"Install names").
"""
import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent


def _requirements():
  lines = (_HERE / 'requirements.txt').read_text().splitlines()
  return [l.split('#')[0].strip() for l in lines if l.split('#')[0].strip()]


setuptools.setup(
    name='hpunet_jax',
    version='0.1.0',
    description=('JAX/Haiku Hierarchical Probabilistic U-Net (Kohl et al. '
                 '2019) and the Probabilistic U-Net baseline.'),
    python_requires='>=3.10',
    packages=setuptools.find_packages(include=['hpunet_jax', 'hpunet_jax.*']),
    install_requires=_requirements(),
    # `pip install -e .[tensorboard]`: the TensorBoard viewer for the event
    # files the trainer writes (tensorboardX, in requirements.txt, writes them
    # without it).
    extras_require={'tensorboard': ['tensorboard']},
)
