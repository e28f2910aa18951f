"""The PyTorch reference of the side-by-side benchmark (skipped without torch,
an optional extra: benchmarks/README.md)."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from benchmarks import common  # pylint: disable=g-import-not-at-top
from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
from experiments import lidc  # pylint: disable=g-import-not-at-top
from hpunet_jax import models  # pylint: disable=g-import-not-at-top

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _jax_counts(config):
  model = models.make_model(config.model_type, config.model.to_dict())
  height, width = config.image_size
  image = np.zeros((1, height, width, config.model.num_input_channels),
                   np.float32)
  params = jax.eval_shape(model.init_in_graph, jax.random.PRNGKey(0), image,
                          np.zeros((1, height, width), np.int32))
  counts = {'prior': 0, 'posterior': 0, 'rest': 0}
  for module, leaves in params.items():
    part = ('prior' if '/prior/' in module else
            'posterior' if '/posterior/' in module else 'rest')
    counts[part] += sum(int(np.prod(x.shape)) for x in leaves.values())
  return counts


def _torch_counts(config):
  kwargs = config.model.to_dict()
  kwargs.pop('num_prior_only_channels')
  net = torch_reference.HierarchicalProbUNet(**kwargs)
  counts = {'prior': 0, 'posterior': 0, 'rest': 0}
  for name, p in net.named_parameters():
    part = name.split('.')[0]
    counts[part if part in counts else 'rest'] += p.numel()
  return counts


@pytest.mark.parametrize('arg', ['hpunet', 'tiny'])
def test_same_parameter_count_per_part(arg):
  config = lidc.get_config(arg)
  assert _torch_counts(config) == _jax_counts(config)


def test_lidc_parameter_count_is_the_issues():
  assert sum(_torch_counts(lidc.get_config('hpunet')).values()) == 20_584_302


def test_train_step_lowers_the_loss_and_samples_have_the_shape():
  config = lidc.get_config('tiny')
  torch.manual_seed(0)
  kwargs = config.model.to_dict()
  kwargs.pop('num_prior_only_channels')
  net = torch_reference.HierarchicalProbUNet(**kwargs)
  batch = common.synthetic_batch(config)
  image = torch.from_numpy(batch['image']).permute(0, 3, 1, 2).contiguous()
  segmentation = torch.from_numpy(batch['segmentation']).long()
  loss_config = dict(config.loss.to_dict(), top_k_fraction=1.0)
  step = torch_reference.make_train_step(net, loss_config, 1e-3, 0.9, 0.999,
                                         1e-8)
  losses = [float(step(image, segmentation)) for _ in range(5)]
  assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
  samples = net.sample(image[:1], 20, chunk=16)
  assert samples.shape == (20, config.model.num_classes) + tuple(
      config.image_size)


def test_quick_side_by_side_writes_every_contender(tmp_path):
  out = tmp_path / 'torch_vs_jax.json'
  subprocess.run(
      [sys.executable, '-m', 'benchmarks.torch_vs_jax', '--quick', '--reps',
       '1', '--compiler_options', 'default', '--torch_retain_memory',
       '--out', str(out)],
      check=True, cwd=_REPO, timeout=600)
  results = json.loads(out.read_text())
  assert results['machine']['cpu_model']
  for task in ('train:2', 'sample:4'):
    stats = results['results']['tasks'][task]
    assert set(stats) == {'jax:default', 'torch:eager', 'torch:eager_retain'}
    assert stats['jax:default']['num_params'] == (
        stats['torch:eager']['num_params'])
    assert all(s['median_s'] > 0 and s['ready_s'] > 0 for s in stats.values())
    # JAX as the entry points run it: the trainer reuses freed memory, the
    # evaluator's sampler does not; stock torch keeps glibc's defaults.
    memory = {c: s['host_memory_reuse'] for c, s in stats.items()}
    assert memory['torch:eager'].startswith('glibc defaults')
    if task.startswith('train'):
      assert memory['jax:default'] == memory['torch:eager_retain']
    else:
      assert memory['jax:default'].startswith('glibc defaults')


def test_same_logits_as_jax_with_the_same_parameters(monkeypatch):
  config = lidc.get_config('tiny')
  model = models.make_model(config.model_type, config.model.to_dict())
  batch = common.synthetic_batch(config)
  params = model.init(jax.random.PRNGKey(0), batch['image'],
                      batch['segmentation'])
  kwargs = config.model.to_dict()
  kwargs.pop('num_prior_only_channels')
  net = torch_reference.HierarchicalProbUNet(**kwargs)
  torch_reference.load_haiku_params(net, params)
  # Zero noise: the posterior passes its means, as `model.reconstruct` does.
  monkeypatch.setattr(torch, 'randn_like', torch.zeros_like)
  logits, _ = net.train_forward(
      torch.from_numpy(batch['image']).permute(0, 3, 1, 2).contiguous(),
      torch.from_numpy(batch['segmentation']).long())
  expected = model.reconstruct(params, batch['image'], batch['segmentation'])
  np.testing.assert_allclose(logits.detach().permute(0, 2, 3, 1).numpy(),
                             np.asarray(expected), rtol=1e-4, atol=1e-5)
