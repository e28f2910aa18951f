"""Did a run end converged? GECO runs are judged from their logged metrics
(`metrics.jsonl`), ELBO runs from a held-out loss at their checkpoints.

A run stopped mid-anneal is not a result of its config: under GECO the
multiplier lambda first rises until the reconstruction constraint is met,
then falls while the model trades the constraint's slack for a smaller KL,
and only when the moving-average constraint sits at kappa does lambda stop
moving (GECO's equilibrium). Comparing a run stopped in the falling phase
with a converged one compares how far each got, not the models. So every
run records whether it ended converged, by these rules (`config.convergence`):

* GECO (`loss.objective == 'geco'`), over the logged steps of the last
  `window_steps` steps:
  - band: the mean moving-average constraint per pixel (`constraint_per_pixel`
    = moving average / pixels - kappa) lies within
    `constraint_band * kappa` of 0;
  - drift: log lambda changed by at most `max_log_lambda_drift` between the
    first and the last logged step of the window.
* ELBO (fixed beta; nothing anneals): the mean loss on the same held-out
  batches (`heldout_examples` images of `heldout_split`, one fixed key, no
  augmentation) at the run's last two kept checkpoints differs by at most
  `loss_plateau_tolerance` of its magnitude (`heldout_plateau`). Held out
  and paired, because the logged training loss is one batch per logged
  step: the sPU-Net's swings by 30 % of its mean between batches, so means
  of a window's few logged steps cannot resolve a 2 % change.

GECO needs at least two logged steps in the window, the ELBO two kept
checkpoints; fewer is reported as not judged, never as converged.

Spikes: a step whose per-pixel reconstruction loss (`rec_mean`) exceeds
`spike_factor` times its moving average over the steps before it
(`SpikeCounter`, every step, not only the logged ones) is a spike; the
trainer appends each to `spikes.jsonl` and the finished record counts them.
"""
import json
import math
import os
from typing import (Any, Dict, List, Mapping, NamedTuple, Optional, Sequence,
                    Tuple)

METRICS_FILE = 'metrics.jsonl'
SPIKES_FILE = 'spikes.jsonl'
# Decay of the moving average a step's reconstruction loss is compared with
# (as GECO's own moving average of the constraint, 0.99, a little shorter).
SPIKE_AVERAGE_DECAY = 0.98
GECO_RULE = 'geco_equilibrium'
HELDOUT_RULE = 'heldout_loss_plateau'


class Convergence(NamedTuple):
  """A run's verdict: `converged`, the `rule` applied, the measured `values`
  and a one-line `reason`."""
  converged: bool
  rule: str
  values: Dict[str, float]
  reason: str

  def to_dict(self) -> Dict[str, Any]:
    return dict(self._asdict())


def check_convergence_config(convergence: Mapping[str, Any]) -> None:
  """Raises one ValueError naming the `config.convergence` field whose value
  no run could meet (not positive, not finite, or a non-integer window)."""
  window = convergence['window_steps']
  if isinstance(window, bool) or not isinstance(window, int) or window < 1:
    raise ValueError('config.convergence.window_steps must be a positive '
                     f'integer, got {window!r}.')
  examples = convergence['heldout_examples']
  if (isinstance(examples, bool) or not isinstance(examples, int)
      or examples < 1):
    raise ValueError('config.convergence.heldout_examples must be a positive '
                     f'integer, got {examples!r}.')
  for name in ('constraint_band', 'max_log_lambda_drift',
               'loss_plateau_tolerance', 'spike_factor'):
    value = convergence[name]
    if (isinstance(value, bool) or not isinstance(value, (int, float))
        or not math.isfinite(value) or value <= 0):
      raise ValueError(f'config.convergence.{name} must be a finite number '
                       f'> 0, got {value!r}.')


def read_history(workdir: str) -> List[Dict[str, float]]:
  """The logged steps of `<workdir>/metrics.jsonl`, in step order; a step
  logged twice (a resumed run) keeps its last record."""
  path = os.path.join(workdir, METRICS_FILE)
  by_step = {}
  with open(path) as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}, line {number}: not JSON ({e}).') from None
      by_step[int(record['step'])] = record
  return [by_step[step] for step in sorted(by_step)]


def _window(history: Sequence[Mapping[str, float]], first: int,
            last: int) -> List[Mapping[str, float]]:
  return [r for r in history if first < r['step'] <= last]


def geco_equilibrium(history: Sequence[Mapping[str, float]], last_step: int,
                     kappa: float, window_steps: int, constraint_band: float,
                     max_log_lambda_drift: float) -> Convergence:
  """GECO's equilibrium over the last `window_steps` (module docstring).

  Args:
    history: logged steps with `step`, `constraint_per_pixel`, `lambda`.
    last_step: the run's final step.
    kappa: the constraint's target per pixel.
    window_steps, constraint_band, max_log_lambda_drift: `config.convergence`.
  """
  window = _window(history, last_step - window_steps, last_step)
  if last_step < window_steps or len(window) < 2:
    return Convergence(False, GECO_RULE, {},
                       f'not judged: {last_step} steps, {len(window)} logged '
                       f'in the window of the last {window_steps}')
  constraint = sum(r['constraint_per_pixel'] for r in window) / len(window)
  drift = math.log(window[-1]['lambda']) - math.log(window[0]['lambda'])
  band = constraint_band * kappa
  values = {'constraint_per_pixel': constraint, 'band': band,
            'log_lambda_drift': drift, 'lambda': window[-1]['lambda'],
            'window_first_step': window[0]['step']}
  failed = []
  if abs(constraint) > band:
    failed.append(f'constraint {constraint:+.4f} per pixel outside '
                  f'+-{band:.4f}')
  if abs(drift) > max_log_lambda_drift:
    failed.append(f'log lambda moved {drift:+.3f} (limit '
                  f'{max_log_lambda_drift})')
  reason = ('; '.join(failed) if failed else
            f'constraint {constraint:+.4f} within +-{band:.4f}, log lambda '
            f'moved {drift:+.3f}')
  return Convergence(not failed, GECO_RULE, values,
                     f'steps {window[0]["step"]}-{last_step}: {reason}')


def heldout_plateau(step_before: int, loss_before: float, last_step: int,
                    loss_last: float, tolerance: float) -> Convergence:
  """The ELBO's plateau: the held-out loss at the last checkpoint against
  the one before (module docstring)."""
  change = (loss_last - loss_before) / max(abs(loss_before), 1e-12)
  values = {'heldout_loss': loss_last, 'heldout_loss_before': loss_before,
            'step_before': step_before, 'relative_change': change}
  return Convergence(abs(change) <= tolerance, HELDOUT_RULE, values,
                     f'held-out loss at step {step_before} -> {last_step}: '
                     f'{loss_before:.4g} -> {loss_last:.4g} ({change:+.1%}, '
                     f'limit {tolerance:.0%})')


class SpikeCounter:
  """Flags steps whose reconstruction loss jumps above `factor` times its
  moving average (host-side, fed every step's scalars by the train loop)."""

  def __init__(self, factor: float):
    self.factor = factor
    self.average = None

  def update(self, rec_mean: float) -> bool:
    """Whether this step's `rec_mean` is a spike; then folds it in."""
    spike = self.average is not None and rec_mean > self.factor * self.average
    self.average = (rec_mean if self.average is None else
                    SPIKE_AVERAGE_DECAY * self.average
                    + (1 - SPIKE_AVERAGE_DECAY) * rec_mean)
    return spike


def record_spike(workdir: str, step: int, rec_mean: float,
                 average: float) -> None:
  """Appends one spike to `<workdir>/spikes.jsonl`."""
  with open(os.path.join(workdir, SPIKES_FILE), 'a') as f:
    f.write(json.dumps({'step': int(step), 'rec_mean': float(rec_mean),
                        'moving_average': float(average)}) + '\n')


def spike_steps(workdir: str, last_step: int) -> List[int]:
  """The steps up to `last_step` recorded in spikes.jsonl (a step recorded
  again after a resume counts once)."""
  path = os.path.join(workdir, SPIKES_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    steps = {json.loads(line)['step'] for line in f if line.strip()}
  return sorted(s for s in steps if s <= last_step)


def rule_of(config: Any) -> str:
  """The rule that judges runs of `config`."""
  return (GECO_RULE if config.loss.objective == 'geco' else HELDOUT_RULE)


def assess(config: Any, history: Sequence[Mapping[str, float]],
           heldout: Optional[Tuple[int, float, float]] = None
           ) -> Convergence:
  """The verdict for a run of `config` that ended at
  `config.num_train_steps`.

  Args:
    config: the run's config.
    history: its logged steps (`read_history`; GECO's rule reads them).
    heldout: `(step_before, loss_before, loss_last)`, the held-out losses
      of the last two kept checkpoints (`experiments.heldout_loss`; the
      ELBO's rule reads them); None = fewer than two checkpoints.
  """
  settings = config.convergence
  check_convergence_config(settings)
  last_step = int(config.num_train_steps)
  if config.loss.objective == 'geco':
    return geco_equilibrium(history, last_step, float(config.loss.kappa),
                            settings.window_steps, settings.constraint_band,
                            settings.max_log_lambda_drift)
  if heldout is None:
    return Convergence(False, HELDOUT_RULE, {},
                       'not judged: fewer than two kept checkpoints to '
                       'compare (config.checkpoints_to_keep >= 2 needed)')
  step_before, loss_before, loss_last = heldout
  return heldout_plateau(step_before, loss_before, last_step, loss_last,
                         settings.loss_plateau_tolerance)
