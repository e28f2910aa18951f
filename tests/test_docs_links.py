"""The user docs' relative links resolve, and no file cites a note outside the
repository.

Every relative link (`[text](path)`, `![alt](path)`, `[ref]: path`) in
README.md, docs/*.md, benchmarks/README.md and benchmarks/notes/*.md must name
an existing file or folder; a `#anchor` into a markdown file (or into the same
file) must be one of its heading anchors, computed as GitHub does. Links inside
code (fenced blocks, inline code spans) are not links and are skipped.
"""
import pathlib
import re
import subprocess
import unicodedata
import urllib.parse

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC_GLOBS = ('README.md', 'docs/*.md', 'benchmarks/README.md',
             'benchmarks/notes/*.md')
# The private reference note that code comments once cited; spelled in two
# parts so that this file does not match its own test.
PRIVATE_NOTE = 'REFERENCE' + '.md'

_INLINE_LINK = re.compile(r'!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?'
                          r'(?:\s+"[^"]*")?\s*\)')
_REFERENCE_LINK = re.compile(r'^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$')
_HEADING = re.compile(r'^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$')
_HTML_ANCHOR = re.compile(r'<a\s+(?:name|id)="([^"]+)"', re.IGNORECASE)
_FENCE = re.compile(r'^\s{0,3}(```|~~~)')
_CODE_SPAN = re.compile(r'(`+)(?:(?!\1).)+?\1')


def doc_files():
  files = []
  for pattern in DOC_GLOBS:
    files.extend(sorted(ROOT.glob(pattern)))
  return files


def shown(path):
  """`path` relative to the repository root where it lies inside it."""
  try:
    return str(path.relative_to(ROOT))
  except ValueError:
    return str(path)


def prose_lines(text):
  """(line number, line) outside fenced code blocks, inline code spans
  removed."""
  fence = None
  for number, line in enumerate(text.splitlines(), start=1):
    marker = _FENCE.match(line)
    if marker:
      if fence is None:
        fence = marker.group(1)
      elif marker.group(1) == fence:
        fence = None
      continue
    if fence is None:
      yield number, _CODE_SPAN.sub('', line)


def github_anchor(heading):
  """GitHub's anchor of a heading text: rendered text (links as their text,
  no code or emphasis markers), lower case, every character that is not a
  letter, mark, digit, '_', '-' or space dropped, spaces -> '-'."""
  text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading)
  text = re.sub(r'<[^>]+>', '', text).strip().lower()
  kept = ''.join(
      c for c in text
      if c in ' -_' or unicodedata.category(c)[0] in 'LM'
      or unicodedata.category(c) in ('Nd', 'Nl'))
  return kept.replace(' ', '-')


def anchors(path):
  """Heading anchors of a markdown file (duplicates get -1, -2, ...) and
  explicit `<a name=...>` / `id=...` anchors."""
  found, counts = set(), {}
  fence = None
  for line in path.read_text(encoding='utf-8').splitlines():
    marker = _FENCE.match(line)
    if marker:
      if fence is None:
        fence = marker.group(1)
      elif marker.group(1) == fence:
        fence = None
      continue
    if fence is not None:
      continue
    found.update(_HTML_ANCHOR.findall(line))
    heading = _HEADING.match(line)
    if heading:
      slug = github_anchor(heading.group(2))
      count = counts.get(slug, 0)
      counts[slug] = count + 1
      found.add(slug if count == 0 else f'{slug}-{count}')
  return found


def links(path):
  """(line number, target) of every link in the file's prose."""
  text = path.read_text(encoding='utf-8')
  result = []
  for number, line in prose_lines(text):
    for target in _INLINE_LINK.findall(line):
      result.append((number, target))
    reference = _REFERENCE_LINK.match(line)
    if reference:
      result.append((number, reference.group(1)))
  return result


def is_external(target):
  return bool(re.match(r'^[a-zA-Z][a-zA-Z0-9+.-]*:', target)) or (
      target.startswith('//'))


def broken_links(path):
  """Messages for the links of `path` that do not resolve."""
  problems = []
  for number, target in links(path):
    if is_external(target):
      continue
    file_part, _, anchor = target.partition('#')
    file_part = urllib.parse.unquote(file_part.split('?')[0])
    resolved = (path.parent / file_part).resolve() if file_part else path
    where = f'{shown(path)}:{number}: link {target!r}'
    if not resolved.exists():
      problems.append(f'{where}: {file_part} does not exist')
      continue
    if anchor and resolved.suffix == '.md' and resolved.is_file():
      anchor = urllib.parse.unquote(anchor)
      if anchor not in anchors(resolved):
        problems.append(f'{where}: no heading with anchor #{anchor} in '
                        f'{shown(resolved)}')
  return problems


@pytest.mark.parametrize(
    'path', doc_files(), ids=shown)
def test_relative_links_resolve(path):
  assert broken_links(path) == []


def test_the_docs_are_found():
  names = {shown(p) for p in doc_files()}
  assert {'README.md', 'benchmarks/README.md',
          'docs/paper_notes.md'} <= names


def test_link_checker_catches_broken_links(tmp_path):
  (tmp_path / 'other.md').write_text('# 12. GECO as coded\n\n## Twice\n'
                                     '## Twice\n')
  doc = tmp_path / 'doc.md'
  doc.write_text(
      '# Title\n\n[ok](other.md#12-geco-as-coded) [ok](other.md#twice-1) '
      '[ok](#title) [web](https://example.com/x.md#y)\n'
      '`[code](missing.md)`\n```\n[code](missing.md)\n```\n'
      '[bad](missing.md) [bad](other.md#nowhere) [bad](#nothing)\n'
      '[ref]: gone/file.py\n')
  problems = broken_links(doc)
  assert len(problems) == 4, problems
  assert any('missing.md does not exist' in p for p in problems)
  assert any('#nowhere' in p for p in problems)
  assert any('#nothing' in p for p in problems)
  assert any('gone/file.py does not exist' in p for p in problems)


@pytest.mark.parametrize('heading, anchor', [
    ('1. Sources', '1-sources'),
    ('15. sPU-Net as originally coded', '15-spu-net-as-originally-coded'),
    ("Where the first step's and sampling's time goes (AMD EPYC, 2026-12-02)",
     'where-the-first-steps-and-samplings-time-goes-amd-epyc-2026-12-02'),
    ('Against PyTorch (`torch_vs_jax`)', 'against-pytorch-torch_vs_jax'),
    ('GED² and [HM-IoU](x.md)', 'ged-and-hm-iou'),
])
def test_github_anchor(heading, anchor):
  assert github_anchor(heading) == anchor


def tracked_text_files():
  try:
    listed = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, check=True,
                            capture_output=True).stdout
  except (OSError, subprocess.CalledProcessError) as e:
    pytest.skip(f'not a git checkout ({e})')
  for name in listed.decode().split('\0'):
    path = ROOT / name
    if name and path.is_file():
      content = path.read_bytes()
      if b'\0' not in content:  # Binary files (PNG, npz, ...) are skipped.
        yield name, content


def test_no_tracked_file_mentions_the_private_note():
  offenders = [name for name, content in tracked_text_files()
               if PRIVATE_NOTE.encode() in content]
  assert offenders == [], (
      f'{offenders} mention {PRIVATE_NOTE}, a note outside the repository; '
      'cite docs/paper_notes.md instead')
