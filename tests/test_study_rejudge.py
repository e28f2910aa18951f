"""The study judges every run by today's rule: a run recorded under a
replaced rule (the ELBO's plateau of logged single-batch losses) is judged
again from its checkpoints, and its records take the new verdict."""
import json
import os

from eval import outputs
from experiments import train_lib
from experiments.study import runs as study_runs
from hpunet_jax.runtime import run_record
from tests import helpers


def test_a_run_judged_by_the_replaced_elbo_rule_is_judged_again(
    tmp_path, monkeypatch):
  _, config, run_dir = helpers.tiny_lesion_run(tmp_path, 'spunet')
  first = study_runs.train_or_load(config, run_dir)
  # As the v3 study's runs, trained before the held-out settings existed:
  # the study must still accept the run as trained with its config.
  saved_path = os.path.join(run_dir, 'config.json')
  with open(saved_path) as f:
    saved = json.load(f)
  del saved['convergence']['heldout_examples']
  del saved['convergence']['heldout_split']
  with open(saved_path, 'w') as f:
    json.dump(saved, f)
  new_verdict = run_record.read_finished(run_dir)['convergence']
  assert new_verdict['rule'] == 'heldout_loss_plateau'
  assert new_verdict['values']['step_before'] < config.num_train_steps
  assert first['converged'] == new_verdict['converged']
  # As a run finished before the rule changed recorded it: the opposite
  # verdict, by the old rule's name, in finished.json and metrics.json.
  old_verdict = {'converged': not new_verdict['converged'],
                 'rule': 'loss_plateau', 'values': {},
                 'reason': 'mean loss 132.6 -> 149.1 (+12.4%, limit 2%)'}
  run_record.write_finished(run_dir, config.num_train_steps, config,
                            old_verdict)
  metrics_path = os.path.join(outputs.final_results_dir(run_dir, config),
                              'metrics.json')
  with open(metrics_path) as f:
    metrics = json.load(f)
  with open(metrics_path, 'w') as f:
    json.dump(dict(metrics, converged=old_verdict['converged'],
                   convergence=old_verdict), f)

  def no_training(*args, **kwargs):
    raise AssertionError('a finished run was trained again')
  monkeypatch.setattr(train_lib, 'train_and_evaluate', no_training)
  again = study_runs.train_or_load(config, run_dir)
  assert not again['trained']
  assert again['converged'] == new_verdict['converged']
  assert run_record.read_finished(run_dir)['convergence'] == new_verdict
  with open(metrics_path) as f:
    rewritten = json.load(f)
  assert rewritten['convergence'] == new_verdict
  assert rewritten['converged'] == new_verdict['converged']
  assert {k: v for k, v in rewritten.items()
          if k not in ('converged', 'convergence')} == {
              k: v for k, v in metrics.items()
              if k not in ('converged', 'convergence')}
  # A verdict by today's rule is read, not recomputed.
  monkeypatch.setattr(train_lib, 'judge_convergence', no_training)
  assert study_runs.train_or_load(config, run_dir)['converged'] == (
      new_verdict['converged'])

