"""Installs hpunet_jax and its companion packages (datasets, experiments, eval)."""
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
    packages=setuptools.find_packages(
        include=['hpunet_jax*', 'datasets*', 'experiments*', 'eval*']),
    package_data={'datasets': ['*/dummy_data/**/*', '*/*.txt']},
    install_requires=_requirements(),
)
