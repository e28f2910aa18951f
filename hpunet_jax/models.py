"""`make_model`: the Haiku modules as a bundle of pure, jit-able functions.

```python
model = make_model('hpunet', config.model)   # or 'spunet'
params = model.init(rng, image, segmentation)   # drawn on the host
out = model.train_forward(params, rng, image, segmentation)
samples = model.sample(params, rng, image, num_samples=16)   # [N,B,H,W,K]
```

Sampling runs the encoder once and maps the decoder path over N keys
(paper Sec. 2: "only the U-Net's decoder needs to be rerun"), `SAMPLE_CHUNK`
keys at a time.

`init` draws the parameters on the host (`hpunet_jax.initialisation`: same
tree and distributions, no minutes-long compile of random draws and QRs);
`init_in_graph` is Haiku's own init, kept as the reference.

Shape glossary: `B` batch, `H, W` image size, `C_in` image channels, `K`
classes, `N` samples, `L` latent levels.
"""
from typing import Any, Callable, Mapping, NamedTuple

import haiku as hk
import jax

from hpunet_jax import hpunet
from hpunet_jax import initialisation
from hpunet_jax import spunet

# Decoder passes vmapped together when sampling. One vmap over all N keys
# holds N decoders' temporaries at once (1.35 GiB for N = 100 at 128x128);
# chunks of 16 bound that and measured no slower on CPU
# (benchmarks/README.md, sampling). The samples are the same.
SAMPLE_CHUNK = 16

MODEL_CLASSES = {
    'hpunet': hpunet.HierarchicalProbUNet,
    'spunet': spunet.ProbUNet,
}


class Model(NamedTuple):
  """Pure functions of one model; see docs/interfaces.md.

  Attributes:
    init: `(rng, image [B,H,W,C_in], segmentation [B,H,W]) -> params`,
      drawn on the host from NumPy generators seeded by `rng` (same tree and
      distributions as `init_in_graph`, other values).
    train_forward: `(params, rng, image, segmentation) -> TrainOutputs`.
    reconstruct: `(params, image, segmentation) -> logits [B,H,W,K]` from the
      posterior means.
    encode: `(params, image) -> encoding` (prior encoder features).
    decode: `(params, rng, encoding, mean_levels=None) -> logits [B,H,W,K]`.
    sample: `(params, rng, image, num_samples, mean_levels=None,
      per_sample=None) -> logits [N,B,H,W,K]`, encoder once, decoder mapped
      over N keys (vmapped in chunks of `SAMPLE_CHUNK`). `per_sample`, a
      function of one sample's logits `[B,H,W,K]` (static under jit), is
      applied inside the map, so only its (smaller) outputs are stacked
      over N: e.g. the argmax labels.
    sample_full_rerun: same result as `sample`, re-running the whole network
      for each sample (the reference for tests and benchmarks).
    num_latent_levels: L.
    init_in_graph: Haiku's own init, every draw and QR in the graph (its jit
      compiles for minutes for the LIDC model).
  """
  init: Callable[..., Any]
  train_forward: Callable[..., Any]
  reconstruct: Callable[..., Any]
  encode: Callable[..., Any]
  decode: Callable[..., Any]
  sample: Callable[..., Any]
  sample_full_rerun: Callable[..., Any]
  num_latent_levels: int
  init_in_graph: Callable[..., Any]


def make_model(model_type: str, model_kwargs: Mapping[str, Any]) -> Model:
  """Builds the functions of `model_type` ('hpunet' or 'spunet').

  Args:
    model_type: which network.
    model_kwargs: constructor kwargs of `hpunet.HierarchicalProbUNet` or
      `spunet.ProbUNet` (a config's `model` sub-dict).
  """
  if model_type not in MODEL_CLASSES:
    raise ValueError(f'Unknown model_type {model_type!r}; expected one of '
                     f'{sorted(MODEL_CLASSES)}.')
  model_class = MODEL_CLASSES[model_type]
  kwargs = dict(model_kwargs)

  def template():
    net = model_class(**kwargs)
    decode_one = lambda image, mean_levels: net.decode(net.encode(image),
                                                       mean_levels)
    return net.train_forward, (net.train_forward, net.reconstruct, net.encode,
                               net.decode, decode_one)

  transformed = hk.multi_transform(template)
  (train_apply, reconstruct_apply, encode_apply, decode_apply,
   sample_one_apply) = transformed.apply

  init = initialisation.host_init(
      lambda image, segmentation: model_class(**kwargs).train_forward(
          image, segmentation))
  num_latent_levels = hk.transform(
      lambda: model_class(**kwargs).num_latent_levels).apply({}, None)

  def reconstruct(params, image, segmentation):
    return reconstruct_apply(params, None, image, segmentation)

  def encode(params, image):
    return encode_apply(params, None, image)

  def decode(params, rng, encoding, mean_levels=None):
    return decode_apply(params, rng, encoding, mean_levels)

  def sample(params, rng, image, num_samples: int, mean_levels=None,
             per_sample=None):
    encoding = encode(params, image)
    keys = jax.random.split(rng, num_samples)
    reduce = per_sample or (lambda logits: logits)
    return jax.lax.map(
        lambda key: reduce(decode(params, key, encoding, mean_levels)), keys,
        batch_size=max(1, min(SAMPLE_CHUNK, num_samples)))

  def sample_full_rerun(params, rng, image, num_samples: int,
                        mean_levels=None):
    keys = jax.random.split(rng, num_samples)
    return jax.numpy.stack([sample_one_apply(params, key, image, mean_levels)
                            for key in keys])

  return Model(init=init, train_forward=train_apply,
               reconstruct=reconstruct, encode=encode, decode=decode,
               sample=sample, sample_full_rerun=sample_full_rerun,
               num_latent_levels=num_latent_levels,
               init_in_graph=transformed.init)
