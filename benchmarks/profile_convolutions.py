"""Per-layer 3x3 convolution times of the LIDC train step: JAX and PyTorch.

  python -m benchmarks.profile_convolutions [--quick] [--batch_size 8]

Collects every `conv_general_dilated` of the trainer's loss (the model's
forward pass, read from its jaxpr: the 3x3 convolutions and the decoder's 2x2
convolutions of up-sampled maps; the 1x1 convolutions are matrix products,
`convolutions.pointwise_conv`, and not listed), groups identical ones, and
times each alone, steady state, in three passes: forward, input gradient
(`jax.vjp` in the input) and weight gradient (`jax.vjp` in the kernel). JAX is
timed with XLA's default options (YNNPACK) and with `eigen_conv` (the
trainer's), PyTorch (if installed) with `F.conv2d` and
`aten.convolution_backward` on the same shapes, channels first (its CPU
layout), as many threads as JAX has cores. Times are medians; a layer's total
is its count times its time. Sums over layers show which pass and which
resolution holds a framework's convolution time. JAX is timed first, then
PyTorch, in the trainer's malloc settings.
"""
import collections
import os
from typing import Any, Dict, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from hpunet_jax import models
from hpunet_jax import objective

NAME = 'profile_convolutions'
PASSES = ('forward', 'input_gradient', 'weight_gradient')
_SHORT = {'forward': 'fwd', 'input_gradient': 'dgrad',
          'weight_gradient': 'wgrad'}


def _extra_flags(parser):
  parser.add_argument('--batch_size', type=int, default=None,
                      help='batch size (default: the LIDC setup, 8).')
  parser.add_argument('--runs', type=int, default=None,
                      help='timed calls per layer and pass (default 7).')
  parser.add_argument('--no_torch', action='store_true',
                      help='time JAX only.')


def _sub_jaxprs(value):
  """The jaxprs held by an equation parameter (closed or not, or lists)."""
  if isinstance(value, jax.extend.core.ClosedJaxpr):
    yield value.jaxpr
  elif isinstance(value, jax.extend.core.Jaxpr):
    yield value
  elif isinstance(value, (tuple, list)):
    for item in value:
      yield from _sub_jaxprs(item)


def convolutions_of(jaxpr) -> collections.Counter:
  """`{(lhs shape, rhs shape, padding): count}` of the NHWC/HWIO,
  stride-1, undilated convolutions in `jaxpr` and its sub-jaxprs."""
  found = collections.Counter()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated':
      params = eqn.params
      dims = params['dimension_numbers']
      if (tuple(dims.lhs_spec) != (0, 3, 1, 2) or
          tuple(dims.rhs_spec) != (3, 2, 0, 1) or
          tuple(params['window_strides']) != (1, 1) or
          tuple(params['lhs_dilation']) != (1, 1) or
          tuple(params['rhs_dilation']) != (1, 1) or
          params['feature_group_count'] != 1):
        raise ValueError(f'Unexpected convolution parameters: {params}')
      key = (tuple(eqn.invars[0].aval.shape), tuple(eqn.invars[1].aval.shape),
             tuple(tuple(p) for p in params['padding']))
      found[key] += 1
    for value in eqn.params.values():
      for sub in _sub_jaxprs(value):
        found.update(convolutions_of(sub))
  return found


def train_convolutions(config) -> collections.Counter:
  """The convolutions of the trainer's loss for `config` (one batch)."""
  model = models.make_model(config.model_type, config.model.to_dict())
  batch = {k: jnp.asarray(v) for k, v in common.synthetic_batch(config).items()}
  loss_config = config.loss.to_dict()
  trainable = jax.eval_shape(
      lambda rng: objective.init_trainable(
          model, rng, batch['image'][:1], batch['segmentation'][:1],
          loss_config), jax.random.PRNGKey(0))
  closed = jax.make_jaxpr(
      lambda t, rng: objective.loss_fn(
          t, objective.init_geco_state(), rng, batch, model=model,
          loss_config=loss_config))(trainable, jax.random.PRNGKey(1))
  return convolutions_of(closed.jaxpr)


def _conv(x, w, padding):
  return jax.lax.conv_general_dilated(
      x, w, window_strides=(1, 1), padding=padding,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def jax_pass_calls(lhs_shape, rhs_shape, padding, options_name: str):
  """`{pass: no-argument call}` of the three compiled passes."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(lhs_shape, np.float32))
  w = jnp.asarray(rng.standard_normal(rhs_shape, np.float32))
  y_shape = jax.eval_shape(lambda a, b: _conv(a, b, padding), x, w).shape
  g = jnp.asarray(rng.standard_normal(y_shape, np.float32))
  functions = {
      'forward': (lambda a, b: _conv(a, b, padding), (x, w)),
      'input_gradient': (lambda a, b, c: jax.vjp(
          lambda a_: _conv(a_, b, padding), a)[1](c)[0], (x, w, g)),
      'weight_gradient': (lambda a, b, c: jax.vjp(
          lambda b_: _conv(a, b_, padding), b)[1](c)[0], (x, w, g)),
  }
  calls = {}
  for name, (fn, args) in functions.items():
    compiled = common.compile_with(jax.jit(fn), args, options_name)
    calls[name] = (lambda c=compiled, a=args: c(*a))
  return calls


def torch_pass_calls(lhs_shape, rhs_shape, padding):
  """The same three passes in PyTorch, channels first."""
  import torch  # pylint: disable=g-import-not-at-top
  batch, height, width, channels = lhs_shape
  kh, kw, _, outputs = rhs_shape
  (top, bottom), (left, right) = padding
  if top != bottom or left != right:
    raise ValueError(f'Asymmetric padding {padding} has no F.conv2d form.')
  pad = [top, left]
  generator = torch.Generator().manual_seed(0)
  x = torch.randn(batch, channels, height, width, generator=generator)
  w = torch.randn(outputs, channels, kh, kw, generator=generator)
  with torch.no_grad():
    y = torch.nn.functional.conv2d(x, w, padding=pad)
  g = torch.randn(y.shape, generator=generator)

  def backward(mask):
    def call():
      with torch.no_grad():
        return torch.ops.aten.convolution_backward(
            g, x, w, None, [1, 1], pad, [1, 1], False, [0, 0], 1, mask)
    return call

  def forward():
    with torch.no_grad():
      return torch.nn.functional.conv2d(x, w, padding=pad)

  return {'forward': forward,
          'input_gradient': backward([True, False, False]),
          'weight_gradient': backward([False, True, False])}


def _time(call, num_runs: int, torch_call: bool) -> float:
  """Median seconds of `call()`; PyTorch's first two calls pick and cache
  oneDNN's kernels, so it gets two warm-up calls."""
  return common.time_calls(call, num_runs=num_runs,
                           num_warmup=2 if torch_call else 1).median_s


def _layer_name(key) -> str:
  lhs, rhs, _ = key
  return (f'{rhs[0]}x{rhs[1]} {lhs[1]}x{lhs[2]} {lhs[3]}->{rhs[3]} '
          f'(B {lhs[0]})')


def main():
  args = common.parse_args(__doc__.splitlines()[0], _extra_flags,
                           retain_freed_memory=True)  # As the trainer.
  num_runs = args.runs or (3 if args.quick else 7)
  common.enable_compilation_cache()
  machine = common.machine_info()
  config = common.experiment_config('lidc', tiny=args.quick,
                                    batch_size=args.batch_size)
  layers = train_convolutions(config)
  contenders: List[Tuple[str, Any]] = [
      (f'jax:{name}', name) for name in args.compiler_options]
  use_torch = not args.no_torch
  if use_torch:
    try:
      import torch  # pylint: disable=g-import-not-at-top
      torch.set_num_threads(len(os.sched_getaffinity(0)))
      contenders.append(('torch:eager', None))
    except ImportError:
      use_torch = False
  rows, per_layer = [], []
  totals: Dict[str, Dict[str, float]] = {
      name: collections.defaultdict(float) for name, _ in contenders}
  for key, count in sorted(layers.items(), key=lambda kv: -kv[0][0][1]):
    lhs, rhs, padding = key
    entry = {'lhs_shape': list(lhs), 'rhs_shape': list(rhs),
             'padding': [list(p) for p in padding], 'count': count,
             'seconds': {}}
    for name, options_name in contenders:
      is_torch = options_name is None
      calls = (torch_pass_calls(lhs, rhs, padding) if is_torch else
               jax_pass_calls(lhs, rhs, padding, options_name))
      times = {p: _time(calls[p], num_runs, is_torch) for p in PASSES}
      entry['seconds'][name] = times
      for p in PASSES:
        totals[name][p] += count * times[p]
    per_layer.append(entry)
    rows.append([_layer_name(key), count] + [
        f'{1e3 * entry["seconds"][name][p]:.1f}'
        for name, _ in contenders for p in PASSES])
  headers = ['layer', 'count'] + [f'{name} {_SHORT[p]} ms'
                                  for name, _ in contenders for p in PASSES]
  common.print_table(
      f'3x3/2x2 convolutions of the LIDC train step, batch '
      f'{config.batch_size}: ms per call', headers, rows)
  common.print_table(
      'Per step (count x time), seconds', ['contender'] + list(PASSES) +
      ['all'], [[name] + [totals[name][p] for p in PASSES] +
                [sum(totals[name].values())] for name, _ in contenders])
  results = {'batch_size': config.batch_size,
             'image_size': list(config.image_size), 'runs': num_runs,
             'layers': per_layer,
             'per_step_seconds': {k: dict(v) for k, v in totals.items()}}
  if use_torch:
    results['torch_version'] = torch.__version__
  common.write_results(NAME, results, machine, args.out)


if __name__ == '__main__':
  main()
