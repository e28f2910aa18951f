"""The synthetic study: decoding, pooling, configs and the tiny pipeline."""
import json
import math
import os

import numpy as np
import pytest

from datasets.synthetic_lesions import generator
from datasets.synthetic_lesions import generator_v2
from datasets.synthetic_lesions import synthetic_lesions_dataset_builder
from eval import bootstrap
from eval import evaluation
from eval import outputs
import hpunet_jax
from experiments.study import analysis as study_analysis
from experiments.study import options as study_options
from experiments.study import runs as study_runs
from experiments.study import synthetic as study_synthetic
from hpunet_jax.runtime import checkpointing
from hpunet_jax.runtime import machine
from hpunet_jax.runtime import run_record
from tests import helpers


def _lesion_params(index):
  example = generator.generate_example(generator.LesionsSpec(), seed=0,
                                       split_id=2, index=index)
  return generator.LesionParams.from_features(example)


def _grading(params, style, subset):
  """bool `[H, W]`: the true grading of `subset` (bool `[N]`) in `style`."""
  rho = generator.normalised_radius(params)
  return np.any(subset[:, None, None] &
                (rho <= params.style_scales[style]), axis=0)


def test_decoding_recovers_style_and_presence_of_true_gradings():
  rng = np.random.default_rng(0)
  for index in range(5):
    params = _lesion_params(index)
    num_lesions = len(params.radii)
    gradings, styles, subsets = [], [], []
    for style in range(len(params.style_scales)):
      for _ in range(3):
        subset = rng.random(num_lesions) < 0.5
        subset[rng.integers(num_lesions)] = True  # Style needs a lesion.
        gradings.append(_grading(params, style, subset))
        styles.append(style)
        subsets.append(subset)
    gradings.append(np.zeros_like(gradings[0]))  # Nothing segmented.
    decoded_styles, present = study_analysis.decode_lesion_samples(
        np.stack(gradings), params, presence_threshold=0.5)
    np.testing.assert_array_equal(decoded_styles, styles + [-1])
    np.testing.assert_array_equal(present,
                                  np.stack(subsets + [subsets[0] & False]))


def _v2_example(config_name, index):
  config = {c.name: c for c in synthetic_lesions_dataset_builder.Builder
            .BUILDER_CONFIGS}[config_name]
  return generator_v2.generate_example(
      config.spec, config.seed,
      synthetic_lesions_dataset_builder.SPLIT_IDS['test'], index)


@pytest.mark.parametrize('config_name,num_images', [('default', 6),
                                                    ('tiny', 4)])
def test_decoding_every_v2_mode_gives_back_its_style_and_subset(
    config_name, num_images):
  """v2 (signed-distance styles): every (style, subset) grading is one of
  the enumerated modes, all distinct but the empty one, and decodes to
  exactly its style and subset."""
  for index in range(num_images):
    params = generator_v2.params_from_features(_v2_example(config_name, index))
    assert isinstance(params, generator_v2.LesionParamsV2)
    num_lesions, num_styles = len(params.probs), len(params.style_scales)
    field = params.style_field()
    gradings, styles, subsets = [], [], []
    for style in range(num_styles):
      for bits in range(1, 2**num_lesions):  # Non-empty subsets.
        subset = np.array([(bits >> i) & 1 for i in range(num_lesions)], bool)
        gradings.append(np.any(subset[:, None, None] &
                               (field <= params.style_scales[style]), axis=0))
        styles.append(style)
        subsets.append(subset)
    modes, _ = generator.enumerate_modes(params)
    # One merged empty mode plus S x (2^N - 1) distinct ones: the gradings
    # built here are exactly the enumerated modes.
    assert len(modes) == 1 + num_styles * (2**num_lesions - 1)
    assert ({m.astype(bool).tobytes() for m in modes} ==
            {g.tobytes() for g in gradings} |
            {np.zeros_like(gradings[0]).tobytes()})
    decoded_styles, present = study_analysis.decode_lesion_samples(
        np.stack(gradings + [np.zeros_like(gradings[0])]), params,
        presence_threshold=0.5)
    np.testing.assert_array_equal(decoded_styles, styles + [-1])
    np.testing.assert_array_equal(present[:-1], np.stack(subsets))
    assert not present[-1].any()


def test_v2_truth_matches_decoded_oracle_samples():
  """`true_disagreement` is what decoding many true v2 gradings gives."""
  params = generator_v2.params_from_features(_v2_example('default', 0))
  samples = generator.oracle_sample(params, np.random.default_rng(0), 4000)
  styles, present = study_analysis.decode_lesion_samples(samples > 0, params,
                                                         0.5)
  truth = study_analysis.true_disagreement(params)
  assert truth['p_style_differs'] == pytest.approx(0.625)
  # Standard errors at 4000 samples are about 0.01.
  assert study_analysis.style_disagreement(styles) == pytest.approx(
      truth['p_style_differs'], abs=0.04)
  assert study_analysis.presence_disagreement(present) == pytest.approx(
      truth['p_presence_differs'], abs=0.04)
  assert np.mean(styles < 0) == pytest.approx(truth['frac_style_undefined'],
                                              abs=0.03)


def test_decoding_rejects_bad_threshold_and_shape():
  params = _lesion_params(0)
  with pytest.raises(ValueError, match='presence_threshold'):
    study_analysis.decode_lesion_samples(np.zeros((1, 64, 64)), params, 0.0)
  with pytest.raises(ValueError, match='do not match'):
    study_analysis.decode_lesion_samples(np.zeros((1, 32, 32)), params, 0.5)


def test_disagreement_probabilities():
  # Styles 0, 0, 1 (and one undefined): of 6 ordered pairs 4 differ.
  assert study_analysis.style_disagreement(np.array([0, 0, 1, -1])) == (
      pytest.approx(4 / 6))
  assert math.isnan(study_analysis.style_disagreement(np.array([2, -1])))
  # Lesion 0 present in 1 of 4 samples (3/6 pairs differ), lesion 1 always.
  present = np.array([[1, 1], [0, 1], [0, 1], [0, 1]], bool)
  assert study_analysis.presence_disagreement(present) == pytest.approx(0.25)
  truth = study_analysis.true_disagreement(_lesion_params(0))
  assert truth['p_style_differs'] == pytest.approx(1 - (2 * 0.25**2 + 0.5**2))


def test_pool_seeds_matches_pooled_bootstrap_and_drops_nan():
  seeds = [{'a': np.array([0.1, 0.3, np.nan]), 'b': np.array([1.0]),
            'ece_bins': np.ones((3, 3, 11))},  # Not a per-image metric.
           {'a': np.array([0.5, 0.7])}]
  pooled = study_analysis.pool_seeds(seeds, num_resamples=50, rng_seed=3)
  assert set(pooled) == {'a', 'a_std', 'b', 'b_std'}
  mean, std = bootstrap.pooled_bootstrap(
      [np.array([0.1, 0.3]), np.array([0.5, 0.7])], 50, rng=3)
  assert (pooled['a'], pooled['a_std']) == (mean, std)
  assert pooled['b'] == 1.0 and pooled['b_std'] == 0.0
  # The mixture of two seeds' bootstrap distributions.
  summaries = [{'x': 1.0, 'x_std': 0.3, 'n': 5}, {'x': 2.0, 'x_std': 0.4}]
  mixed = study_analysis.pool_summaries(summaries)
  assert mixed['x'] == pytest.approx(1.5)
  assert mixed['x_std'] == pytest.approx(math.sqrt((0.09 + 0.16) / 2 + 0.25))


def test_pool_runs_keeps_the_spread_over_seeds():
  options = study_options.StudyOptions(workdir='w', num_resamples=20).resolved()
  config = study_options.make_config(study_options.LESIONS, 'hpunet', 0,
                                     options)
  runs = [dict(metrics=dict(iou_rec=m, num_images=2, num_samples=4),
               per_image=dict(iou_rec=np.array([m - 0.1, m + 0.1])),
               wall_time_s=t, converged=c)
          for m, t, c in ((0.5, 10.0, True), (0.8, 20.0, None))]
  entry = study_runs.pool_runs(runs, config, options)
  assert entry['seed_means'] == {'iou_rec': [0.5, 0.8]}
  assert entry['converged'] == [True, None]  # One verdict per seed.
  assert entry['seed_std']['iou_rec'] == pytest.approx(0.3 / math.sqrt(2))
  assert entry['iou_rec'] == pytest.approx(0.65, abs=0.1)
  assert entry['num_seeds'] == 2 and entry['wall_time_s'] == 30.0
  assert entry['cpus_per_seed'] == [None, None]  # Not recorded.
  single = study_runs.pool_runs(runs[:1], config, options)
  assert single['seed_std'] == {'iou_rec': None}


def test_make_config_scales_the_learning_rate_drop_and_validates():
  options = study_options.StudyOptions(workdir='w', steps=5000).resolved()
  config = study_options.make_config(study_options.LESIONS, 'no_topk', 2,
                                     options)
  assert config.num_train_steps == 5000 and config.seed == 2
  # The config's drop at the same fraction of the run (1400 of 2500 steps).
  assert tuple(config.optimizer.boundaries) == (2800,)
  assert config.loss.top_k_fraction == 0.0
  with pytest.raises(ValueError, match='Unknown lesion_variants'):
    study_options.StudyOptions(workdir='w',
                               lesion_variants=('nope',)).resolved()


def test_seeds_per_variant_and_bad_settings():
  options = study_options.StudyOptions(workdir='w', seeds=3,
                                    ablation_seeds=2).resolved()
  lesions, cells = study_options.LESIONS, study_options.CELLS
  assert [study_options.seeds_of(options, lesions, v)
          for v in study_options.STUDY_LESION_VARIANTS] == [3, 3, 2, 2, 2]
  assert study_options.seeds_of(options, cells, 'hpunet') == 3
  assert study_options.seeds_by_variant(options, lesions, ('spunet', 'no_topk')
                                     ) == {'spunet': [0, 1, 2],
                                           'no_topk': [0, 1]}
  same = study_options.StudyOptions(workdir='w', seeds=2).resolved()
  assert study_options.seeds_of(same, lesions, 'local_latents') == 2
  for bad in (dict(ablation_seeds=0), dict(seeds=0),
              dict(posterior_samples=0)):
    with pytest.raises(study_options.StudySettingsError, match='must be >= 1'):
      study_options.StudyOptions(workdir='w', **bad).resolved()
  # The generalisation set must be of the training data's version.
  assert study_options.data_version('many_lesions') == 'v2'
  with pytest.raises(study_options.StudySettingsError, match='lesions v1'):
    study_options.StudyOptions(
        workdir='w', generalisation_config='v1_many_lesions').resolved()
  with pytest.raises(study_options.StudySettingsError, match='not a synthetic'):
    study_options.StudyOptions(workdir='w',
                               generalisation_config='nope').resolved()


def _assert_finite_entry(entry, metrics):
  for name in metrics:
    assert math.isfinite(entry[name]) and math.isfinite(entry[name + '_std'])


def test_tiny_study_end_to_end_and_resume(tmp_path, monkeypatch):
  options = study_options.StudyOptions(
      workdir=str(tmp_path / 'runs'), results_dir=str(tmp_path / 'results'),
      seeds=1, lesion_variants=('hpunet', 'spunet'), cell_variants=('spunet',),
      tiny=True, data_dir=str(tmp_path / 'tfds'), command='test')
  written = study_synthetic.run_study(options)
  lesions = json.loads(
      (tmp_path / 'results' / 'synthetic_lesions.json').read_text())
  cells = json.loads(
      (tmp_path / 'results' / 'synthetic_cells.json').read_text())
  assert lesions == json.loads(json.dumps(written['synthetic_lesions']))
  for variant in ('hpunet', 'spunet'):
    entry = lesions[variant]
    # 4 samples: GED at "16" and at all samples are both ged_4.
    _assert_finite_entry(entry, ('iou_rec', 'ged_4', 'hm_iou', 'exact_ged',
                                 'exact_hm_iou'))
    _assert_finite_entry(entry['oracle'], ('ged_4', 'exact_ged'))
    assert entry['num_seeds'] == 1 and entry['num_train_steps'] == 3
    assert entry['num_images'] == 2 and entry['num_samples'] == 4
    assert entry['wall_time_s'] > 0
    # The CPU each seed trained on, with its vector features.
    (cpus,) = entry['cpus_per_seed']
    assert cpus == [' '.join([machine.cpu_model()]
                             + machine.cpu_vector_features())]
  # The criteria need GED^2 at 100 samples and the ablations, which this
  # study did not compute or run.
  assert lesions['verdicts'] == {'not_decided': "the results lack 'ged_100'"}
  per_level = lesions['per_level']['settings']
  assert set(per_level) == {'level_0', 'level_1', 'all_levels', 'oracle',
                            'truth'}
  for values in per_level.values():
    _assert_finite_entry(values, ('p_presence_differs',))
  generalisation = lesions['generalisation']
  assert generalisation['builder_config'] == 'tiny' and 'note' in generalisation
  _assert_finite_entry(generalisation['hpunet'], ('iou_rec', 'exact_ged'))
  _assert_finite_entry(cells['spunet'], ('iou_rec', 'rand_error'))
  assert cells['machine']['cpu_cores'] >= 1 and cells['command'] == 'test'
  for figure in lesions['figures'] + cells['figures']:
    assert (tmp_path / 'results' / figure).stat().st_size > 1000
  assert 'figures/synthetic_lesions_per_level.png' in lesions['figures']
  # GECO's phases: every run's training curves.
  assert ('figures/synthetic_lesions_hpunet_seed0_training_curves.png'
          in lesions['figures'])
  assert ('figures/synthetic_cells_spunet_seed0_training_curves.png'
          in cells['figures'])
  assert lesions['seeds'] == {'hpunet': [0], 'spunet': [0]}
  assert 'frac_style_undefined' in per_level['truth']
  # The posterior: IoU_rec from its mean and samples, sigma per level.
  posterior = lesions['posterior']
  _assert_finite_entry(posterior['hpunet'], (
      'iou_rec_posterior_mean', 'iou_rec_posterior_sample'))
  for variant, num_levels in (('hpunet', 2), ('spunet', 1)):
    sigmas = [k for k in posterior[variant]
              if k.startswith('posterior_sigma_') and not k.endswith('_std')]
    assert len(sigmas) == num_levels
    assert all(posterior[variant][k] > 0 for k in sigmas)
  assert posterior['hpunet']['num_seeds'] == 1
  # The same images as the evaluation: its posterior-mean IoU is iou_rec.
  assert posterior['hpunet']['iou_rec_posterior_mean'] == pytest.approx(
      lesions['hpunet']['iou_rec'], abs=1e-6)
  # The answer decomposition: per variant, and the oracle's floor (its
  # samples are true gradings: they snap to themselves).
  answer = lesions['answer']
  for variant in ('hpunet', 'spunet'):
    _assert_finite_entry(answer[variant], ('exact_ged', 'exact_ged_snapped',
                                           'mode_iou', 'presence_mae'))
    assert answer[variant]['num_seeds'] == 1
  assert answer['oracle']['mode_iou'] == 1.0
  assert answer['oracle']['exact_ged_snapped'] == pytest.approx(
      answer['oracle']['exact_ged'], abs=1e-9)
  # Diagnostics: the training end state, GECO's rule and (for the `adam`
  # rule only) lambda at full rate, and the answer entropy (lesions only).
  end = lesions['hpunet']['training_end']
  assert end['step'] == 3 and 0 < end['lambda'] and 'kl_0' in end
  assert [e['step'] for e in lesions['hpunet']['training_end_per_seed']] == [3]
  # A 3-step run is too short for the 300-step window: not judged converged.
  assert lesions['hpunet']['converged'] == [False]
  assert lesions['diagnostics']['geco_multiplier'] == {
      'hpunet': 'multiplicative'}
  assert lesions['diagnostics']['geco_lambda_at_lr_rate'] == {}
  assert generalisation['data_version'] == 'v2'
  assert lesions['diagnostics']['answer_entropy_nats']['mean'] > 0
  assert 'answer_entropy_nats' not in cells['diagnostics']
  # Cells purity: the tiny HPU-Net's finest latent grid is 2x2.
  purity = cells['purity']
  assert purity['grid'] == 2 and purity['num_images'] == 2
  _assert_finite_entry(purity['spunet'], ('purity', 'frac_crossing',
                                          'neighbours_same_label'))
  assert 0 < purity['spunet']['purity'] <= 1

  # A rerun trains nothing and reproduces the results.
  def no_training(*args, **kwargs):
    raise AssertionError('a finished run was trained again')

  monkeypatch.setattr(study_runs.train_lib, 'train_and_evaluate', no_training)
  again = study_synthetic.run_study(options)
  assert again['synthetic_lesions']['hpunet']['exact_ged'] == (
      lesions['hpunet']['exact_ged'])
  with pytest.raises(study_options.StudySettingsError, match='num_train_steps'):
    study_synthetic.run_study(study_options.StudyOptions(
        **{**options.__dict__, 'steps': 2}))


def test_killed_run_evaluated_offline_is_not_pooled(tmp_path, monkeypatch):
  """The issue's probe: the study killed mid-run, `run_metrics` on the
  intermediate checkpoint, the study rerun. The offline metrics.json must
  not count as the run's result; the run is trained to its end first."""
  options, config, run_dir = helpers.tiny_lesion_run(tmp_path, 'hpunet')
  # Killed: a stop request (SIGTERM's path) saves step 1 of 3 and stops.
  monkeypatch.setattr(checkpointing.StopRequest, 'requested',
                      lambda self: True)
  with pytest.raises(study_runs.RunIncompleteError,
                     match='its training has not finished'):
    study_runs.train_or_load(config, run_dir)
  monkeypatch.undo()
  run = hpunet_jax.load(run_dir)  # What run_metrics does.
  assert run.step == 1
  evaluation.evaluate(run.config, run.params, run.model, 'test',
                      config.eval.num_samples, workdir=run_dir,
                      step=run.step)
  # Its own folder (named by step 1); the study must still not count it.
  assert study_runs.is_evaluated(outputs.results_dir(
      run_dir, 'test', step=1, num_samples=config.eval.num_samples,
      num_examples=config.eval.num_examples))
  assert study_runs.completeness_problem(config, run_dir) == (
      'its training has not finished')
  # The rerun trains to the end and evaluates that.
  result = study_runs.train_or_load(config, run_dir)
  assert result['trained']
  assert result['metrics']['checkpoint_step'] == config.num_train_steps == 3
  assert result['metrics']['config_hash'] == run_record.config_hash(config)
  assert study_runs.completeness_problem(config, run_dir) is None
  # Records of another step or config are refused by name.
  finished_path = f'{run_dir}/{run_record.FINISHED_FILE}'
  with open(finished_path) as f:
    finished = json.load(f)
  with open(finished_path, 'w') as f:
    json.dump(dict(finished, step=2), f)
  assert study_runs.completeness_problem(config, run_dir) == (
      'it finished at step 2, the study asks for 3')
  with open(finished_path, 'w') as f:
    json.dump(dict(finished, config_hash='0' * 16), f)
  assert 'trained with config hash 0000000000000000' in (
      study_runs.completeness_problem(config, run_dir))
  with open(finished_path, 'w') as f:
    json.dump(finished, f)
  metrics_path = os.path.join(outputs.final_results_dir(run_dir, config),
                              'metrics.json')
  with open(metrics_path) as f:
    metrics = json.load(f)
  with open(metrics_path, 'w') as f:
    json.dump(dict(metrics, checkpoint_step=1), f)
  assert 'metrics.json evaluates (step, config hash, samples) (1, ' in (
      study_runs.completeness_problem(config, run_dir))
