"""Tests of the speed work and the benchmark helpers (tiny sizes, seconds).

* `blocks.Conv2D` has `hk.Conv2D`'s parameters and results, and
  `pointwise_conv`'s hand-written weight gradient equals autodiff's.
* The benchmark helpers time, generate and tabulate what they claim.
"""
import json

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import common
from benchmarks import metrics_speed
from benchmarks import profile_convolutions
from benchmarks import profile_sampling
from benchmarks import profile_train_step
from benchmarks import startup
from hpunet_jax import blocks
from hpunet_jax import convolutions


@pytest.mark.parametrize('kernel', [1, 3])
def test_conv2d_matches_haiku_conv2d(kernel):
  """Same parameter tree and initial values, outputs and gradients."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 5))
  ours = hk.transform(lambda x: blocks.conv(6, kernel, name='c')(x))
  haiku = hk.transform(lambda x: hk.Conv2D(
      6, kernel, padding='SAME', w_init=blocks.weight_init(),
      b_init=blocks.bias_init(), name='c')(x))
  params = ours.init(jax.random.PRNGKey(1), x)
  reference_params = haiku.init(jax.random.PRNGKey(1), x)
  assert jax.tree.structure(params) == jax.tree.structure(reference_params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference_params)):
    np.testing.assert_array_equal(a, b)

  def loss(apply, params, x):
    return jnp.sum(jnp.sin(apply(params, None, x)))

  np.testing.assert_allclose(ours.apply(params, None, x),
                             haiku.apply(params, None, x), rtol=1e-5,
                             atol=1e-5)
  grads = jax.grad(loss, argnums=(1, 2))(ours.apply, params, x)
  reference = jax.grad(loss, argnums=(1, 2))(haiku.apply, params, x)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_pointwise_conv_gradient_with_uneven_chunks():
  """Pixel counts that 2048 does not divide still give exact gradients."""
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 7, 4))
  w = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
  loss = lambda f: lambda x, w: jnp.sum(jnp.cos(f(x, w)))
  grads = jax.grad(loss(convolutions.pointwise_conv), argnums=(0, 1))(x, w)
  reference = jax.grad(loss(jnp.dot), argnums=(0, 1))(x, w)
  for a, b in zip(grads, reference):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_conv2d_rejects_unbatched_input():
  apply = hk.transform(lambda x: blocks.conv(4, 3, name='c')(x)).init
  with pytest.raises(ValueError, match=r'\[B, H, W, C\]'):
    apply(jax.random.PRNGKey(0), jnp.zeros((8, 8, 3)))


def test_time_calls_counts_runs_and_rejects_zero():
  calls = []
  timing = common.time_calls(lambda: calls.append(1) or jnp.zeros(()),
                             num_runs=3, num_warmup=2)
  assert len(calls) == 5 and len(timing.runs_s) == 3
  assert timing.min_s <= timing.median_s
  with pytest.raises(ValueError, match='num_runs'):
    common.time_calls(lambda: None, num_runs=0)


def test_time_interleaved_runs_round_robin():
  order = []
  calls = {name: (lambda name=name: order.append(name) or jnp.zeros(()))
           for name in ('a', 'b')}
  timings = common.time_interleaved(calls, num_runs=2, num_warmup=1)
  assert order == ['a', 'b', 'a', 'b', 'a', 'b']
  assert set(timings) == {'a', 'b'} and len(timings['a'].runs_s) == 2


@pytest.mark.parametrize('options_name', sorted(common.COMPILER_OPTIONS))
def test_compiler_options_compile_a_convolution(options_name):
  """The option sets are valid for the installed jaxlib and keep results."""
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 8, 8, 3))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4))
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
  compiled = common.compile_with(conv, (x, w), options_name)
  np.testing.assert_allclose(compiled(x, w), conv(x, w), rtol=1e-5,
                             atol=1e-5)


def test_lesion_masks_are_small_blobs_some_empty():
  masks = common.lesion_masks(np.random.default_rng(0), 100, 128, 128)
  assert masks.shape == (100, 128, 128) and masks.dtype == bool
  areas = masks.reshape(100, -1).sum(1)
  assert 0.1 < np.mean(areas == 0) < 0.5  # ~30% empty
  assert areas.max() < 128 * 128 / 20  # radii <= 12 * 1.4 px


def test_metric_inputs_have_the_stated_form():
  stack = metrics_speed.lesion_stack(np.random.default_rng(0), 3, 20, 32)
  assert stack.shape == (3, 20, 32, 32) and stack.dtype == bool
  samples = metrics_speed.instance_samples(np.random.default_rng(0), 4, 32,
                                           num_cells=6, num_ids=15)
  assert samples.shape == (4, 32, 32) and samples.dtype == np.int32
  assert samples.min() == 0 and samples.max() <= 15
  # Membranes separate the cells: background is present but not dominant.
  assert 0.05 < np.mean(samples == 0) < 0.6


def test_write_results_records_machine(tmp_path, capsys):
  path = common.write_results('x', {'value': 1.5}, common.machine_info(),
                              out=str(tmp_path / 'x.json'))
  payload = json.loads(open(path).read())
  assert payload['results'] == {'value': 1.5}
  for key in ('cpu_model', 'num_cores', 'jax', 'backend', 'device_kind',
              'load_average_1_5_15'):
    assert key in payload['machine']
  common.print_table('t', ['a', 'b'], [[1, 0.123456]])
  assert '0.123' in capsys.readouterr().out


def test_startup_kernel_counts_read_the_hlo():
  ynn = 'backend_config={"fusion_config":{"kind":"__ynn_fusion"}}'
  hlo = '\n'.join([
      f'  %ynn_fusion.1 = f32[] fusion(%a), kind=kCustom, calls=%f1, '
      f'metadata={{op_name="jit(step)/reduce_sum"}}, {ynn}',
      f'  %ynn_fusion.2 = f32[] fusion(%a), kind=kCustom, calls=%f2, '
      f'metadata={{op_name="jit(step)/hpunet/encode/reduce_sum"}}, {ynn}',
      f'  %ynn_fusion.3 = f32[8,4]{{1,0}} fusion(%a, %w), kind=kCustom, '
      f'calls=%f3, metadata={{op_name="jit(step)/dot_general"}}, {ynn}',
      '  %add_fusion = f32[8,4]{1,0} fusion(%x, %y), kind=kLoop, calls=%f4',
      '  %conv.1 = f32[2,8,8,4]{3,2,1,0} convolution(%x, %w), '
      'window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f'])
  assert startup.kernel_counts(hlo) == {
      'ynn_fusions': 3, 'loop_fusions': 1, 'convolutions': 1,
      'scalar_reductions_outside_the_model': 1}


def test_startup_times_each_phase_and_no_ynn_has_no_ynnpack_kernels():
  config = common.experiment_config('lidc', tiny=True)
  with pytest.raises(ValueError, match=r"Unknown variants \['bogus'\]"):
    startup.measure(config, ['bogus'])
  results = startup.measure(config, ['no_ynn'], num_steps=1)
  assert results['init_s'] > 0 and results['lower_s'] > 0
  variant = results['variants']['no_ynn']
  assert variant['kernels']['ynn_fusions'] == 0
  assert variant['kernels']['convolutions'] > 0
  assert len(variant['step_runs_s']) == 2
  for key in ('compile_empty_cache_s', 'load_from_cache_s', 'first_step_s',
              'step_median_s'):
    assert variant[key] > 0, key


def test_experiment_config_batch_size_replaces_the_setups():
  assert common.experiment_config('lidc').batch_size == 8
  assert common.experiment_config('lidc', batch_size=32).batch_size == 32
  tiny = common.experiment_config('lidc', tiny=True)
  assert common.experiment_config(
      'lidc', tiny=True, batch_size=3).batch_size == 3 != tiny.batch_size


def test_profile_sampling_sums_kernel_events_by_kind():
  events = [
      {'ph': 'X', 'name': 'ynn_fusion.3', 'dur': 2e6},
      {'ph': 'X', 'name': 'maximum_bitcast_fusion.12', 'dur': 1e6},
      {'ph': 'X', 'name': 'conv_general_dilated.7', 'dur': 5e5},
      {'ph': 'X', 'name': 'wrapped_reverse', 'dur': 1e5},
      {'ph': 'X', 'name': 'ThunkExecutor::Execute', 'dur': 9e6},
      {'ph': 'X', 'name': 'end: ynn_fusion', 'dur': 9e6},
      {'ph': 'X', 'name': '$profiler.py:307 trace', 'dur': 9e6},
      {'ph': 'i', 'name': 'ynn_fusion.4'}]
  assert profile_sampling.kernel_seconds(events) == pytest.approx({
      'ynnpack_fusions': 2.0, 'loop_fusions': 1.0, 'convolution_events': 0.5,
      'other': 0.1})


def test_profile_train_step_sums_by_family_and_reads_convolutions_as_rest():
  events = [
      {'ph': 'X', 'name': 'transpose_copy_fusion.3', 'dur': 2e6},
      {'ph': 'X', 'name': 'transpose_copy_fusion.14', 'dur': 1e6},
      {'ph': 'X', 'name': 'convolution.7', 'dur': 1e5},
      {'ph': 'X', 'name': 'conv_general_dilated.2', 'dur': 1e5},
      {'ph': 'X', 'name': 'ThunkExecutor::Execute', 'dur': 9e6},
      {'ph': 'i', 'name': 'copy.4'}]
  by_family = profile_train_step.kernel_seconds_by_family(events)
  assert by_family == pytest.approx({'transpose_copy_fusion': 3.0,
                                     'convolution': 0.1,
                                     'conv_general_dilated': 0.1})
  assert profile_train_step.shares(by_family, wall_s=10.0) == pytest.approx(
      {'transpose_copy_fusion': 3.0, 'convolutions': 7.0})


def test_profile_convolutions_finds_nested_convolutions_and_counts_them():
  def conv(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  def f(x, w3, w5):
    y = jax.jit(conv)(x, w3)  # Inside a nested jaxpr.
    y = jax.checkpoint(conv)(y, w3)
    return conv(x, w5) + y

  x = jnp.zeros((2, 8, 8, 4))
  found = profile_convolutions.convolutions_of(
      jax.make_jaxpr(f)(x, jnp.zeros((3, 3, 4, 4)),
                        jnp.zeros((5, 5, 4, 4))).jaxpr)
  assert found == {((2, 8, 8, 4), (3, 3, 4, 4), ((1, 1), (1, 1))): 2,
                   ((2, 8, 8, 4), (5, 5, 4, 4), ((2, 2), (2, 2))): 1}
  strided = jax.make_jaxpr(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (2, 2), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')))(
          x, jnp.zeros((3, 3, 4, 4)))
  with pytest.raises(ValueError, match='window_strides'):
    profile_convolutions.convolutions_of(strided.jaxpr)


def test_profile_convolutions_passes_have_the_passes_shapes():
  calls = profile_convolutions.jax_pass_calls(
      (2, 6, 6, 3), (3, 3, 3, 5), ((1, 1), (1, 1)), 'default')
  assert calls['forward']().shape == (2, 6, 6, 5)
  assert calls['input_gradient']().shape == (2, 6, 6, 3)
  assert calls['weight_gradient']().shape == (3, 3, 3, 5)


def test_device_check_parses_its_flags_and_quick_runs_write_json(
    tmp_path, capsys):
  """The accelerator check's driver: flags, a bf16 train variant and float32
  sampling of the tiny LIDC config on CPU, and the summary merging them."""
  from benchmarks import device_check  # pylint: disable=g-import-not-at-top
  from benchmarks import device_summary  # pylint: disable=g-import-not-at-top
  args = device_check.parse_args(['train', '--out', 'x.json', '--variants',
                                  'bfloat16:highest:32', 'float32:default:8'])
  assert args.variants == [('bfloat16', 'highest', 32),
                           ('float32', 'default', 8)]
  for bad in ('float16:default:8', 'float32:low:8', 'float32:default:0',
              'float32:default'):
    with pytest.raises(SystemExit):
      device_check.parse_args(['train', '--out', 'x', '--variants', bad])
    assert repr(bad) in capsys.readouterr().err
  with pytest.raises(SystemExit):
    device_check.parse_args(['sampling', '--out', 'x', '--num_samples', '0'])

  train = str(tmp_path / 'train.json')
  sampling = str(tmp_path / 'sampling.json')
  device_check.main(['train', '--quick', '--out', train, '--variants',
                     'bfloat16:default:2'])
  device_check.main(['sampling', '--quick', '--out', sampling,
                     '--compute_dtypes', 'float32', '--num_samples', '2'])
  junit = tmp_path / 'tests.xml'
  junit.write_text(
      '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
      '<testcase classname="tests.test_a" name="test_ok"/>'
      '<testcase classname="tests.test_a" name="test_bad">'
      '<failure message="AssertionError: 1 != 2&#10;more"/></testcase>'
      '<testcase classname="tests.test_a" name="test_skip"><skipped/>'
      '</testcase></testsuite></testsuites>')
  steps = tmp_path / 'steps.tsv'
  steps.write_text('setup 0 3 60\ntests 124 150 150\nsampling 125 0 0\n')
  out = str(tmp_path / 'device.json')
  device_summary.main(['--out', out, '--parts', train, sampling,
                       str(tmp_path / 'missing.json'), '--junit', str(junit),
                       '--steps', str(steps), '--commit', 'abc1234'])
  payload = json.loads(open(out).read())
  assert payload['commit'] == 'abc1234' and payload['date_utc']
  assert payload['machine']['backend'] == 'cpu'
  assert [s['timed_out'] for s in payload['steps']] == [False, True, False]
  assert payload['steps'][2]['skipped']
  tests = payload['tests']
  assert (tests['passed'], tests['failures'], tests['skipped']) == (1, 1, 1)
  assert tests['failed'] == [{'test': 'tests.test_a::test_bad',
                              'message': 'AssertionError: 1 != 2'}]
  assert tests['status'].startswith('stopped by its timeout')
  trained = payload['parts']['device_check_train']
  assert not trained['failed'] and trained['image_size'] == [32, 32]
  result = trained['variants']['bfloat16:default:2']
  assert result['step']['median_s'] > 0 and result['last_non_finite_state'] == 0
  assert set(trained['matmul_tflop_per_s']) == {'float32', 'bfloat16'}
  sampled = payload['parts']['device_check_sampling']
  assert not sampled['failed']
  assert set(sampled['by_dtype']['float32']['2']) >= {
      'encoder_once', 'full_rerun', 'evaluator_sample_labels'}
  assert 'missing' in payload['parts']['missing.json']['status']
  assert 'train bfloat16:default:2' in capsys.readouterr().out
