"""The synthetic study's options and the config of one run.

`StudyOptions` holds what `experiments/study/synthetic.py` runs (variants,
seeds, analysis sizes; None fields take `FULL_SETTINGS` or `TINY_SETTINGS`);
`make_config` is a run's task config with the study's overrides.

Seeds: the main variants (`hpunet`, `spunet`, and every synthetic-cells
variant) train seeds `0..seeds-1`; the lesion ablations (`ABLATION_VARIANTS`)
train `0..ablation_seeds-1` (`seeds_of`). A finished run is reused whatever
the counts, so raising a count later only trains the new seeds.
"""
import dataclasses
from typing import Dict, List, Optional, Sequence

import ml_collections

from datasets.synthetic_lesions import generator_v2
from datasets.synthetic_lesions import synthetic_lesions_dataset_builder
from experiments import synthetic_cells
from experiments import synthetic_lesions

LESIONS, CELLS = 'synthetic_lesions', 'synthetic_cells'
TASK_MODULES = {LESIONS: synthetic_lesions, CELLS: synthetic_cells}
TASK_DIRS = {LESIONS: 'lesions', CELLS: 'cells'}
# The variants issue 6 compares (the config files may offer more).
STUDY_LESION_VARIANTS = ('hpunet', 'spunet', 'global_latents',
                         'local_latents', 'no_topk')
STUDY_CELL_VARIANTS = ('hpunet', 'spunet')
# Lesion variants whose seed count is `--ablation_seeds` (Table 2's ablations).
ABLATION_VARIANTS = ('global_latents', 'local_latents', 'no_topk')
# Settings that `--tiny` replaces (None = the config's own value).
# `many_lesions`: v2, 5-6 lesions (the training set `default` has 2-4).
FULL_SETTINGS = dict(steps=None, num_eval_images=None, num_samples=None,
                     per_level_images=100, per_level_samples=32,
                     posterior_images=100, posterior_samples=4,
                     purity_images=100, generalisation_config='many_lesions')
TINY_SETTINGS = dict(steps=3, num_eval_images=2, num_samples=4,
                     per_level_images=2, per_level_samples=4,
                     posterior_images=2, posterior_samples=2,
                     purity_images=2, generalisation_config='tiny')


class StudySettingsError(ValueError):
  """The study's options are invalid or contradict a finished run."""


@dataclasses.dataclass
class StudyOptions:
  """What the study runs; None fields take `FULL_SETTINGS` / `TINY_SETTINGS`.

  Attributes:
    workdir: folder of all runs.
    results_dir: where the JSON files and figures go.
    seeds: trained seeds (0..seeds-1) of `hpunet`, `spunet` and the cells
      variants.
    ablation_seeds: trained seeds of each lesion ablation
      (`ABLATION_VARIANTS`); None = `seeds`.
    lesion_variants: variants of `synthetic_lesions.py`.
    cell_variants: variants of `synthetic_cells.py` (empty = skip cells).
    tiny: the `tiny` configs and settings.
    steps: `num_train_steps` (learning-rate drops scaled along).
    num_eval_images: test images evaluated per run.
    num_samples: samples per image in the evaluation.
    per_level_images: test images of the per-level analysis.
    per_level_samples: samples per image and level setting.
    presence_threshold: covered fraction of a lesion's core that counts as
      present.
    posterior_images: test images of the posterior analysis
      (`study_posterior`).
    posterior_samples: posterior samples per image and grader there.
    purity_images: test images of the cells' purity analysis
      (`study_cells`).
    purity_erosion: pixels eroded from each true cell there.
    generalisation_config: lesions builder config of the generalisation
      evaluation (same data version as the training set); '' skips it.
    data_dir: TFDS data directory (None = TFDS's default).
    num_resamples: bootstrap resamples per seed.
    command: the command line, recorded in the results.
  """
  workdir: str
  results_dir: str = 'results'
  seeds: int = 3
  ablation_seeds: Optional[int] = None
  lesion_variants: Sequence[str] = STUDY_LESION_VARIANTS
  cell_variants: Sequence[str] = STUDY_CELL_VARIANTS
  tiny: bool = False
  steps: Optional[int] = None
  num_eval_images: Optional[int] = None
  num_samples: Optional[int] = None
  per_level_images: Optional[int] = None
  per_level_samples: Optional[int] = None
  posterior_images: Optional[int] = None
  posterior_samples: Optional[int] = None
  purity_images: Optional[int] = None
  purity_erosion: int = 1
  presence_threshold: float = 0.5
  generalisation_config: Optional[str] = None
  data_dir: Optional[str] = None
  num_resamples: int = 1000
  command: str = ''

  def resolved(self) -> 'StudyOptions':
    """A copy with the None settings filled for full or tiny mode."""
    defaults = TINY_SETTINGS if self.tiny else FULL_SETTINGS
    filled = {k: v for k, v in defaults.items()
              if getattr(self, k) is None}
    if self.ablation_seeds is None:
      filled['ablation_seeds'] = self.seeds
    options = dataclasses.replace(self, **filled)
    for name in ('seeds', 'ablation_seeds', 'posterior_images',
                 'posterior_samples', 'purity_images'):
      if getattr(options, name) < 1:
        raise StudySettingsError(f'--{name} must be >= 1, got '
                                 f'{getattr(options, name)}.')
    if options.purity_erosion < 0:
      raise StudySettingsError('--purity_erosion must be >= 0, got '
                               f'{options.purity_erosion}.')
    for name, known in (('lesion_variants', synthetic_lesions.VARIANTS),
                        ('cell_variants', synthetic_cells.VARIANTS)):
      unknown = set(getattr(options, name)) - set(known)
      if unknown:
        raise StudySettingsError(f'Unknown {name} {sorted(unknown)}; '
                                 f'expected some of {known}.')
    if options.lesion_variants and options.generalisation_config:
      _check_generalisation_config(options)
    return options


def seeds_of(options: StudyOptions, task: str, variant: str) -> int:
  """How many seeds (0..n-1) the study trains of `task:variant`."""
  if task == LESIONS and variant in ABLATION_VARIANTS:
    return options.ablation_seeds
  return options.seeds


def seeds_by_variant(options: StudyOptions, task: str,
                     variants: Sequence[str]) -> Dict[str, List[int]]:
  """`variant -> [trained seeds]` (recorded in the results)."""
  return {v: list(range(seeds_of(options, task, v))) for v in variants}


def data_version(builder_config: str) -> str:
  """'v1' or 'v2': which generator a synthetic-lesions builder config
  uses (`StudySettingsError`, a ValueError, naming it when the builder has
  no such config)."""
  configs = {c.name: c for c in
             synthetic_lesions_dataset_builder.Builder.BUILDER_CONFIGS}
  if builder_config not in configs:
    raise StudySettingsError(
        f'--generalisation_config={builder_config!r} is not a '
        f'synthetic_lesions builder config; expected one of {sorted(configs)}.')
  spec = configs[builder_config].spec
  return 'v2' if isinstance(spec, generator_v2.LesionsSpecV2) else 'v1'


def _check_generalisation_config(options: StudyOptions) -> None:
  """The generalisation set must be of the training set's data version
  (v2's `many_lesions` for v2, `v1_many_lesions` for v1): the other
  version's images are drawn differently."""
  trained_on = make_config(LESIONS, options.lesion_variants[0], 0,
                           options).data.builder_config
  wanted, got = data_version(trained_on), data_version(
      options.generalisation_config)
  if wanted != got:
    raise StudySettingsError(
        f'--generalisation_config={options.generalisation_config!r} is '
        f'synthetic lesions {got}, the study trains on {trained_on!r} '
        f'({wanted}); pick a {wanted} config (v2: many_lesions, '
        'few_lesions; v1: v1_many_lesions).')


def make_config(task: str, variant: str, seed: int,
                options: StudyOptions) -> ml_collections.ConfigDict:
  """The task config of one run with the study's overrides."""
  config = TASK_MODULES[task].get_config(
      f'{variant},tiny' if options.tiny else variant)
  config.seed = seed
  config.data.data_dir = options.data_dir
  if options.steps is not None:
    # Keep the learning-rate drops at the same fractions of training.
    scale = options.steps / config.num_train_steps
    config.optimizer.boundaries = tuple(
        max(1, int(round(b * scale))) for b in config.optimizer.boundaries)
    config.num_train_steps = options.steps
    config.log_every_steps = min(config.log_every_steps, options.steps)
    config.checkpoint_every_steps = min(config.checkpoint_every_steps,
                                        options.steps)
  if options.num_samples is not None:
    # The clustering's threshold follows the sample count in the evaluator
    # (eval.clustering.threshold_for_samples).
    config.eval.num_samples = options.num_samples
  if options.num_eval_images is not None:
    config.eval.num_examples = options.num_eval_images
  if not config.eval.num_samples:
    raise StudySettingsError(f'{task}:{variant} evaluates no samples; pass '
                             '--num_samples.')
  return config
