"""The summary of `benchmarks/device_check.sh`: one JSON of the whole check
(commit, date, machine, each step's exit code and seconds, the tests' counts
and failures, the train and sampling results) and a short table printed last.

  python -m benchmarks.device_summary --out device_<date>.json \
      --parts train.json sampling.json --junit tests.xml --steps steps.tsv \
      --devices_log devices.txt --commit <commit>

Standard library only, so that it still reports when JAX cannot start.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from typing import Any, Dict, List, Mapping, Optional, Sequence


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True, help='summary JSON path.')
  parser.add_argument('--parts', nargs='*', default=[],
                      help='device_check train/sampling JSONs (missing ones '
                           'are noted as such).')
  parser.add_argument('--junit', default=None, help="pytest's JUnit XML.")
  parser.add_argument('--steps', default=None,
                      help="device_check.sh's step log: one 'name exit_code "
                           "seconds timeout_s' line per step.")
  parser.add_argument('--devices_log', default=None,
                      help='nvidia-smi and `device_check devices` output.')
  parser.add_argument('--commit', default='',
                      help="the code's commit ('' = git's HEAD, if any).")
  return parser.parse_args(argv)


def write_json(path: str, payload: Mapping[str, Any]) -> None:
  """Writes `payload` atomically (a timeout never leaves half a file)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(payload, f, indent=2, default=float)
  os.replace(path + '.tmp', path)


def junit_summary(path: Optional[str]) -> Dict[str, Any]:
  """Counts and failed test ids of pytest's JUnit XML (or why none)."""
  if not path or not os.path.exists(path):
    return {'status': f'no JUnit XML at {path} (tests not run, or stopped '
                      'by their timeout: see log.txt)'}
  try:
    root = ElementTree.parse(path).getroot()
  except ElementTree.ParseError as error:
    return {'status': f'unreadable JUnit XML {path}: {error}'}
  counts = {'tests': 0, 'failures': 0, 'errors': 0, 'skipped': 0}
  failed = []
  for suite in root.iter('testsuite'):
    for key in counts:
      counts[key] += int(suite.get(key, 0))
    for case in suite.iter('testcase'):
      problem = case.find('failure')
      if problem is None:
        problem = case.find('error')
      if problem is not None:
        message = (problem.get('message') or '').splitlines()
        failed.append({'test': f'{case.get("classname")}::{case.get("name")}',
                       'message': message[0][:300] if message else ''})
  counts['passed'] = (counts['tests'] - counts['failures'] -
                      counts['errors'] - counts['skipped'])
  return dict(counts, status='complete', failed=failed)


def read_steps(path: Optional[str]) -> List[Dict[str, Any]]:
  """`name rc seconds timeout_s` lines of device_check.sh's step log
  (timeout 0: skipped, the deadline was reached)."""
  steps = []
  if path and os.path.exists(path):
    with open(path) as f:
      for line in f:
        name, rc, seconds, limit = line.split()
        steps.append({'step': name, 'exit_code': int(rc),
                      'seconds': int(seconds), 'timeout_s': int(limit),
                      'timed_out': int(rc) in (124, 137),
                      'skipped': int(limit) == 0})
  return steps


def git_commit() -> str:
  """HEAD of the repository around this file, or 'unknown'."""
  try:
    return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'],
                          cwd=os.path.dirname(os.path.abspath(__file__)),
                          capture_output=True, text=True, check=True,
                          timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return 'unknown'


def summarise(args: argparse.Namespace) -> Dict[str, Any]:
  """One JSON of the check: commit, date, machine, steps, tests, parts."""
  parts, machine = {}, None
  for path in args.parts:
    if not os.path.exists(path):
      parts[os.path.basename(path)] = {'status': 'missing (step failed or '
                                                 'not run: see log.txt)'}
      continue
    with open(path) as f:
      part = json.load(f)
    machine = machine or part.get('machine')
    parts[part.get('benchmark', os.path.basename(path))] = part
  devices_log = None
  if args.devices_log and os.path.exists(args.devices_log):
    with open(args.devices_log) as f:
      devices_log = f.read()[-4000:]
  commit = args.commit or git_commit()
  steps = read_steps(args.steps)
  tests = junit_summary(args.junit)
  if any(s['step'] == 'tests' and s['timed_out'] for s in steps):
    tests['status'] = 'stopped by its timeout: the counts are partial'
  payload = {'benchmark': 'device_check', 'commit': commit,
             'date_utc': datetime.datetime.now(datetime.timezone.utc)
             .isoformat(timespec='seconds'),
             'machine': machine, 'devices_log': devices_log,
             'steps': steps, 'tests': tests, 'parts': parts}
  write_json(args.out, payload)
  return payload


def summary_lines(payload: Mapping[str, Any]) -> List[str]:
  """A short plain-text table of a summary (printed last by the script)."""
  machine = payload.get('machine') or {}
  lines = [f'device check, commit {payload["commit"]}, '
           f'{payload["date_utc"]}, {machine.get("device_kind", "?")} '
           f'({machine.get("backend", "?")}), jax {machine.get("jax", "?")}']
  for s in payload['steps']:
    lines.append(f'  step {s["step"]}: ' + (
        'skipped (deadline reached)' if s['skipped'] else
        f'exit {s["exit_code"]}, {s["seconds"]} s' +
        (' (timed out)' if s['timed_out'] else '')))
  tests = payload['tests']
  if 'passed' in tests:
    lines.append(f'  tests ({tests["status"]}): {tests["passed"]} passed, '
                 f'{tests["failures"]} failed, {tests["errors"]} errors, '
                 f'{tests["skipped"]} skipped')
    lines += [f'    FAILED {f["test"]}: {f["message"]}'
              for f in tests['failed']]
  else:
    lines.append(f'  tests: {tests["status"]}')
  train = payload['parts'].get('device_check_train', {})
  for dtype_name, tflops in train.get('matmul_tflop_per_s', {}).items():
    lines.append(f'  matmul {dtype_name} {train["matmul_size"]}^3: '
                 f'{tflops:.1f} TFLOP/s')
  for name, result in train.get('variants', {}).items():
    lines.append(f'  train {name}: {result["step"]["median_s"] * 1e3:.2f} ms '
                 f'({result["images_per_s"]:.1f} images/s, '
                 f'{result["achieved_tflop_per_s"]:.2f} TFLOP/s, compile '
                 f'{result["compile_s"]:.1f} s, '
                 f'loss {result["last_loss"]:.4g})')
  sampling = payload['parts'].get('device_check_sampling', {})
  for dtype_name, by_count in sampling.get('by_dtype', {}).items():
    for n, result in by_count.items():
      lines.append(f'  sample {dtype_name} N={n}: encoder once '
                   f'{result["encoder_once"]["median_s"] * 1e3:.2f} ms, full '
                   f're-runs {result["full_rerun"]["median_s"] * 1e3:.2f} ms')
  for part in (train, sampling):
    lines += [f'  FAILED {name}: {why[:200]}'
              for name, why in part.get('failed', {}).items()]
  return lines


def main(argv: Optional[Sequence[str]] = None) -> None:
  print('\n'.join(summary_lines(summarise(parse_args(argv)))))


if __name__ == '__main__':
  main(sys.argv[1:])
