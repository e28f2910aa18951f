"""Install names: only `hpunet_jax` is installed; the repository's
`datasets/`, `eval/` and `experiments/` are found from the repository root,
and Hugging Face's `datasets` in the same environment stays importable
elsewhere (docs/install.md, "Install names")."""
import json
import pathlib
import re
import shutil
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
REPOSITORY_PACKAGES = ('datasets', 'eval', 'experiments')


def _setup_field(name: str):
  """A field setup.py hands to setuptools (what pip installs and declares,
  for a wheel and for `pip install -e .` alike)."""
  script = ('import json, runpy, setuptools\n'
            'setuptools.setup = lambda **kw: print(\n'
            f'    json.dumps(kw[{name!r}]))\n'
            'runpy.run_path("setup.py")\n')
  run = subprocess.run([sys.executable, '-c', script], cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=120, check=True)
  return json.loads(run.stdout.strip().splitlines()[-1])


def _installed_packages():
  return _setup_field('packages')


def _name(requirement: str) -> str:
  return re.split(r'[<>=!~;\[ ]', requirement, maxsplit=1)[0].lower()


# Test, data and plotting packages: never needed to load and sample.
NOT_RUN_TIME = ('pytest', 'pytest-xdist', 'tensorflow-datasets', 'grain',
                'array_record', 'pillow', 'tifffile', 'h5py', 'matplotlib',
                'tensorboardx', 'cityscapesscripts', 'scikit-image', 'optax',
                'tensorboard')


def test_run_time_dependencies_are_lean_and_extras_complete():
  core = {_name(r) for r in _setup_field('install_requires')}
  assert {'jax', 'dm-haiku', 'numpy', 'ml-collections',
          'orbax-checkpoint'} <= core
  assert not core & set(NOT_RUN_TIME), core & set(NOT_RUN_TIME)
  extras = {name: {_name(r) for r in requirements}
            for name, requirements in _setup_field('extras_require').items()}
  assert {'pytest', 'pytest-xdist'} <= extras['test']
  assert 'pytest' not in extras['train'] | extras['data']
  assert extras['data'] <= extras['train'] <= extras['test'] == extras['all']
  # requirements.txt, the development stack, is core + all + the viewer.
  listed = {_name(line.split('#')[0].strip())
            for line in (REPO_ROOT / 'requirements.txt').read_text()
            .splitlines() if line.split('#')[0].strip()}
  assert listed == core | extras['all'] | extras['tensorboard']


def test_loading_and_sampling_import_no_data_or_plotting_package(tmp_path):
  script = ('import sys, hpunet_jax\n'
            'hpunet_jax.load, hpunet_jax.TrainedRun\n'
            'from hpunet_jax import images, models, objective\n'
            f'print([m for m in {list(_IMPORT_NAMES)!r} '
            'if m in sys.modules])\n')
  run = subprocess.run([sys.executable, '-c', script], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, check=True)
  assert run.stdout.strip() == '[]', run.stdout


_IMPORT_NAMES = ('pytest', 'tensorflow_datasets', 'grain', 'array_record',
                 'PIL', 'tifffile', 'h5py', 'matplotlib', 'tensorboardX',
                 'cityscapesscripts', 'skimage', 'optax', 'tensorflow')


def _origin(module: str, cwd: pathlib.Path, site: pathlib.Path) -> str:
  """Where `import module` resolves with `site` as the only site dir and
  `cwd` as the working directory (`python -S`: no other site-packages)."""
  script = ('import importlib.util, sys\n'
            f'print(importlib.util.find_spec({module!r}).origin)\n')
  run = subprocess.run([sys.executable, '-S', '-c', script], cwd=cwd,
                       env={'PYTHONPATH': str(site), 'PATH': '/usr/bin:/bin'},
                       capture_output=True, text=True, timeout=60, check=True)
  return run.stdout.strip()


def test_only_hpunet_jax_is_installed():
  packages = _installed_packages()
  assert 'hpunet_jax' in packages and 'hpunet_jax.runtime' in packages
  assert all(p == 'hpunet_jax' or p.startswith('hpunet_jax.')
             for p in packages), packages


def test_hugging_face_datasets_and_ours_coexist(tmp_path):
  # A site dir as `pip install .` leaves it, next to Hugging Face's package.
  site = tmp_path / 'site-packages'
  for package in _installed_packages():
    source = REPO_ROOT.joinpath(*package.split('.'))
    target = site.joinpath(*package.split('.'))
    target.mkdir(parents=True)
    for path in source.glob('*.py'):
      shutil.copy(path, target)
  for name in REPOSITORY_PACKAGES:
    assert not (site / name).exists()  # Nothing installed under our names.
  hugging_face = site / 'datasets'
  hugging_face.mkdir()
  (hugging_face / '__init__.py').write_text('"""Hugging Face datasets."""\n')
  outside = tmp_path / 'elsewhere'
  outside.mkdir()

  # Outside the repository: Hugging Face's `datasets`, our installed model.
  assert _origin('datasets', outside, site) == str(hugging_face /
                                                   '__init__.py')
  assert _origin('hpunet_jax', outside, site) == str(
      site / 'hpunet_jax' / '__init__.py')
  # From the repository root (how every command and CI run): ours.
  for name in REPOSITORY_PACKAGES:
    assert _origin(name, REPO_ROOT, site) == str(
        REPO_ROOT / name / '__init__.py')
  # The TFDS builders' files are found next to the repository's package.
  assert _origin('datasets.synthetic_lesions', REPO_ROOT, site) == str(
      REPO_ROOT / 'datasets' / 'synthetic_lesions' / '__init__.py')
