"""Install names: only `hpunet_jax` is installed; the repository's
`datasets/`, `eval/` and `experiments/` are found from the repository root,
and Hugging Face's `datasets` in the same environment stays importable
elsewhere (docs/install.md, "Install names")."""
import json
import pathlib
import shutil
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
REPOSITORY_PACKAGES = ('datasets', 'eval', 'experiments')


def _installed_packages():
  """The `packages` setup.py hands to setuptools (what pip installs, for a
  wheel and for `pip install -e .` alike)."""
  script = ('import json, runpy, setuptools\n'
            'setuptools.setup = lambda **kw: print(\n'
            '    json.dumps(kw["packages"]))\n'
            'runpy.run_path("setup.py")\n')
  run = subprocess.run([sys.executable, '-c', script], cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=120, check=True)
  return json.loads(run.stdout.strip().splitlines()[-1])


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
