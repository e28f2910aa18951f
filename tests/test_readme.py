"""The README: every relative link and `#anchor` resolves, it holds the main
job and the test command CI runs, and it describes the software, not its
history."""
import pathlib
import re

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
README = REPO_ROOT / 'README.md'
MAIN_JOB = ('python -m experiments.train '
            '--config=experiments/synthetic_lesions.py '
            '--workdir=/tmp/hpunet_lesions')


def _without_code_blocks(text: str) -> str:
  return re.sub(r'```.*?```', '', text, flags=re.S)


def heading_anchors(path: pathlib.Path) -> set:
  """GitHub's anchors for a Markdown file's headings: lower case, punctuation
  other than `-` and `_` dropped, spaces to `-`, repeats numbered `-1`, ..."""
  anchors, seen = set(), {}
  for line in _without_code_blocks(path.read_text()).splitlines():
    match = re.match(r'#{1,6}\s+(.*)', line)
    if not match:
      continue
    slug = re.sub(r'[^\w\- ]', '', match.group(1).strip().lower())
    slug = slug.replace(' ', '-')
    count = seen.get(slug, 0)
    seen[slug] = count + 1
    anchors.add(slug if count == 0 else f'{slug}-{count}')
  return anchors


def broken_links(path: pathlib.Path) -> list:
  """`[text](target)` links of a Markdown file whose file or anchor is
  missing (web links are not followed)."""
  broken = []
  for target in re.findall(r'\]\(([^)\s]+)\)',
                           _without_code_blocks(path.read_text())):
    if re.match(r'[a-z]+:', target):
      continue
    file_part, _, anchor = target.partition('#')
    linked = (path.parent / file_part).resolve() if file_part else path
    if not linked.exists():
      broken.append(f'{target}: no such file')
    elif anchor and linked.suffix == '.md' and anchor not in heading_anchors(
        linked):
      broken.append(f'{target}: no heading with that anchor')
  return broken


def test_heading_anchors_follow_github(tmp_path):
  probe = tmp_path / 'probe.md'
  probe.write_text('# A: b (`--c`)\n## 12. GECO as coded\n```\n# not a heading\n'
                   '```\n## a b\n## a b\n[x](#a-b-1) [y](#nowhere) [z](gone.md)\n')
  assert heading_anchors(probe) == {'a-b---c', '12-geco-as-coded', 'a-b',
                                    'a-b-1'}
  assert broken_links(probe) == ['#nowhere: no heading with that anchor',
                                 'gone.md: no such file']


def test_readme_links_resolve():
  assert broken_links(README) == []


def test_readme_holds_main_job_and_ci_test_command():
  text = README.read_text()
  assert MAIN_JOB in text
  ci = (REPO_ROOT / '.ci' / 'run').read_text()
  pytest_lines = [l.strip() for l in ci.splitlines()
                  if l.strip().startswith('python -m pytest')]
  assert pytest_lines, '.ci/run runs no pytest command'
  for line in pytest_lines:
    assert line in text, f'README lacks the CI test command {line!r}'


def test_readme_describes_software_not_history():
  text = README.read_text()
  for pattern in (r'REFERENCE\.md', r'\bissue \d+', r'\bsessions?\b'):
    assert not re.search(pattern, text, re.I), pattern
