"""The README holds the main job and the test command CI runs, and the user
docs describe the software, not its history. (Links: test_docs_links.py.)"""
import pathlib
import re

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
README = REPO_ROOT / 'README.md'
MAIN_JOB = ('python -m experiments.train '
            '--config=experiments/synthetic_lesions.py '
            '--workdir=/tmp/hpunet_lesions')
USER_DOCS = [README] + sorted((REPO_ROOT / 'docs').glob('*.md'))


def test_readme_holds_main_job_and_ci_test_command():
  text = README.read_text()
  assert MAIN_JOB in text
  ci = (REPO_ROOT / '.ci' / 'run').read_text()
  pytest_lines = [l.strip() for l in ci.splitlines()
                  if l.strip().startswith('python -m pytest')]
  assert pytest_lines, '.ci/run runs no pytest command'
  for line in pytest_lines:
    assert line in text, f'README lacks the CI test command {line!r}'
  install = re.search(r"pip install -q (-e '\.\[\w+\]')", ci)
  assert install and f'pip install {install.group(1)}' in text, (
      'README and .ci/run install differently')


def test_readme_is_a_page():
  assert len(README.read_text().splitlines()) <= 260


@pytest.mark.parametrize('path', USER_DOCS, ids=lambda p: p.name)
def test_user_docs_describe_software_not_history(path):
  text = path.read_text()
  for pattern in (r'\bissues? ?#?\d+', r'\bsessions?\b'):
    found = re.search(pattern, text, re.I)
    assert not found, f'{path.name}: {found.group(0)!r}'
