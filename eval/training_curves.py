"""Training curves (paper Fig. 7 / 8) from `<workdir>/metrics.jsonl`.

Panels: the reconstruction term per pixel (over the top-k pixels where
top-k is on; with GECO's kappa), the GECO Lagrange multiplier lambda, the
KL of each latent level and the total KL, each against the training step,
with units on the axes and plain-language legends.
"""
from typing import Any, Dict, List, Optional, Sequence

from matplotlib import figure as mpl_figure
import numpy as np

KL_UNIT = 'KL (nats per image)'


def _series(records: Sequence[Dict[str, Any]], key: str):
  """Steps and values of `key` over the records that have it."""
  pairs = [(r['step'], r[key]) for r in records
           if key in r and r[key] is not None]
  if not pairs:
    return None
  steps, values = zip(*pairs)
  return np.asarray(steps), np.asarray(values, np.float64)


def kl_level_keys(records: Sequence[Dict[str, Any]]) -> List[str]:
  """`kl_0, kl_1, ...` present in the records, coarsest level first."""
  keys = {k for r in records for k in r
          if k.startswith('kl_') and k[3:].isdigit()}
  return sorted(keys, key=lambda k: int(k[3:]))


def kl_level_label(key: str, num_levels: int) -> str:
  """'level 0 (coarsest)' ... 'level 2 (finest)' for `kl_<l>`."""
  level = int(key[3:])
  if num_levels > 1 and level == 0:
    return 'level 0 (coarsest)'
  if num_levels > 1 and level == num_levels - 1:
    return f'level {level} (finest)'
  return f'level {level}'


def rec_axis_label(loss_config) -> str:
  """What `rec_mean` is: cross-entropy per pixel, over the top-k pixels
  when `loss.top_k_fraction` is set (paper Sec. 2)."""
  fraction = loss_config.get('top_k_fraction', None) if loss_config else None
  if fraction:
    return f'cross-entropy (nats) per pixel,\nover the top-k {fraction:.0%}'
  return 'cross-entropy (nats) per pixel'


def make_figure(config, records: Sequence[Dict[str, Any]]
                ) -> Optional[mpl_figure.Figure]:
  """The figure, or None when the records hold none of the curves."""
  loss_config = config.get('loss', None) if hasattr(config, 'get') else None
  is_geco = loss_config is not None and loss_config.get('objective') == 'geco'
  panels = []  # (title, y label, [(legend, series)], kappa)
  rec = _series(records, 'rec_mean')
  if rec is not None:
    panels.append(('reconstruction', rec_axis_label(loss_config),
                   [('reconstruction', rec)],
                   loss_config.get('kappa') if is_geco else None))
  lagrange = _series(records, 'lambda')
  if lagrange is not None:
    panels.append(('GECO Lagrange multiplier', 'lambda (unitless)',
                   [('lambda', lagrange)], None))
  level_keys = kl_level_keys(records)
  kl_levels = [(kl_level_label(k, len(level_keys)), _series(records, k))
               for k in level_keys]
  if kl_levels:
    panels.append(('KL per latent level', KL_UNIT, kl_levels, None))
  kl_sum = _series(records, 'kl_sum')
  if kl_sum is not None:
    panels.append(('KL, all levels', KL_UNIT, [('total KL', kl_sum)], None))
  if not panels:
    return None
  fig = mpl_figure.Figure(figsize=(3.8 * len(panels), 3.2))
  axes = np.asarray(fig.subplots(1, len(panels), squeeze=False))[0]
  for ax, (title, y_label, lines, kappa) in zip(axes, panels):
    for label, (steps, values) in lines:
      ax.plot(steps, values, label=label, linewidth=1)
    if kappa is not None:
      ax.axhline(kappa, color='k', linestyle='--', linewidth=1,
                 label=f'kappa = {kappa:g} (GECO target)')
    ax.set_title(title, fontsize=9)
    ax.set_xlabel('training step', fontsize=8)
    ax.set_ylabel(y_label, fontsize=8)
    ax.tick_params(labelsize=7)
    if len(lines) > 1 or kappa is not None:
      ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def write(path: str, config, records: Sequence[Dict[str, Any]]
          ) -> Optional[str]:
  """Saves `make_figure` to `path`; None (nothing written) without curves."""
  fig = make_figure(config, records)
  if fig is None:
    return None
  fig.savefig(path, dpi=100)
  return path
