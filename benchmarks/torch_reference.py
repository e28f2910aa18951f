"""Our own PyTorch HPU-Net, the LIDC layout of `hpunet_jax`, for benchmarks.

Same modules and parameter count as `hpunet_jax.hpunet.HierarchicalProbUNet`
(pre-activated res-blocks without normalisation, 2x2 average pooling, nearest
up-sampling, a prior and a posterior hierarchical core, the stitching
decoder; orthogonal kernels, truncated-normal biases), the same training loss
(analytic KL per level, stochastic top-k cross-entropy, GECO with the
Lagrange parameter trained by Adam, weight decay on the kernels) and an
encoder-once sampler. Channels first (`[B, C, H, W]`, PyTorch's native CPU
layout). Only the benchmarks use it; `torch` is an optional extra
(benchmarks/README.md).
"""
import math
from typing import List, Sequence, Tuple

import torch
from torch import nn
import torch.nn.functional as F


def _conv(c_in: int, c_out: int, kernel: int) -> nn.Conv2d:
  conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)
  nn.init.orthogonal_(conv.weight, gain=1.0)
  nn.init.trunc_normal_(conv.bias, std=0.001, a=-0.002, b=0.002)
  return conv


class ResBlock(nn.Module):
  """relu -> (3x3 conv to c/2, relu) x n (no relu after the last) -> 1x1 to c;
  skip = x, projected by a 1x1 conv only when the channels change."""

  def __init__(self, c_in: int, channels: int, convs_per_block: int):
    super().__init__()
    half = channels // 2
    self.convs = nn.ModuleList(
        [_conv(c_in if i == 0 else half, half, 3)
         for i in range(convs_per_block)])
    self.out = _conv(half, channels, 1)
    self.skip = _conv(c_in, channels, 1) if c_in != channels else None

  def forward(self, x):
    r = F.relu(x)
    for i, conv in enumerate(self.convs):
      r = conv(r)
      if i < len(self.convs) - 1:
        r = F.relu(r)
    skip = x if self.skip is None else self.skip(x)
    return skip + self.out(r)


def _res_stack(c_in: int, channels: int, num_blocks: int,
               convs_per_block: int) -> nn.Sequential:
  return nn.Sequential(*[
      ResBlock(c_in if i == 0 else channels, channels, convs_per_block)
      for i in range(num_blocks)])


def _up(x):
  return F.interpolate(x, scale_factor=2, mode='nearest')


class HierarchicalCore(nn.Module):
  """Res-U-Net encoder and truncated decoder with latent grids.

  `stop_after_last_latent` (the posterior) builds no decoder blocks after the
  last latent level, as the JAX model creates none.
  """

  def __init__(self, c_in: int, channels: Sequence[int],
               latent_dims: Sequence[int], blocks: int, convs: int,
               stop_after_last_latent: bool = False):
    super().__init__()
    self.latent_dims = tuple(latent_dims)
    self.encoder = nn.ModuleList()
    for level, c in enumerate(channels):
      self.encoder.append(_res_stack(c_in if level == 0 else channels[level - 1],
                                     c, blocks, convs))
    rev = tuple(channels)[::-1]
    self.latent_convs = nn.ModuleDict()
    self.decoder = nn.ModuleList()
    c_x = rev[0]
    self.last_latent = max(l for l, d in enumerate(self.latent_dims) if d)
    self.stop_after_last_latent = stop_after_last_latent
    for level, dim in enumerate(self.latent_dims):
      if dim:
        self.latent_convs[str(level)] = _conv(c_x, 2 * dim, 1)
        c_x += dim
      if stop_after_last_latent and level == self.last_latent:
        break
      self.decoder.append(_res_stack(c_x + rev[level + 1], rev[level + 1],
                                     blocks, convs))
      c_x = rev[level + 1]

  def encode(self, x) -> List[torch.Tensor]:
    features = []
    for level, stack in enumerate(self.encoder):
      if level:
        x = F.avg_pool2d(x, 2)
      x = stack(x)
      features.append(x)
    return features

  def decode(self, features, latents=None):
    """Returns `(x, [(mean, log_std)], [z])`; z from `latents` or sampled."""
    rev = features[::-1]
    x, dists, used = rev[0], [], []
    for level, dim in enumerate(self.latent_dims):
      if dim:
        mean, log_std = self.latent_convs[str(level)](x).chunk(2, dim=1)
        if latents is not None:
          z = latents[len(dists)]
        else:
          z = mean + log_std.exp() * torch.randn_like(mean)
        dists.append((mean, log_std))
        used.append(z)
        x = torch.cat([z, x], dim=1)
        if self.stop_after_last_latent and level == self.last_latent:
          break
      x = torch.cat([_up(x), rev[level + 1]], dim=1)
      x = self.decoder[level](x)
    return x, dists, used


class HierarchicalProbUNet(nn.Module):
  """Prior core, posterior core on `[one_hot(seg), image]`, stitching decoder."""

  def __init__(self, channels_per_level: Sequence[int],
               latent_dims: Sequence[int], num_classes: int,
               blocks_per_level: int, convs_per_block: int,
               num_input_channels: int):
    super().__init__()
    self.num_classes = num_classes
    args = (channels_per_level, latent_dims, blocks_per_level,
            convs_per_block)
    self.prior = HierarchicalCore(num_input_channels, *args)
    self.posterior = HierarchicalCore(num_input_channels + num_classes, *args,
                                      stop_after_last_latent=True)
    rev = tuple(channels_per_level)[::-1]
    self.stitching = nn.ModuleList()
    for level in range(len(latent_dims) + 1, len(rev)):
      self.stitching.append(_res_stack(rev[level - 1] + rev[level], rev[level],
                                       blocks_per_level, convs_per_block))
    self.logits = _conv(rev[-1], num_classes, 1)
    self.start_level = len(latent_dims) + 1

  def _stitch(self, features, x):
    rev = features[::-1]
    for i, stack in enumerate(self.stitching):
      x = stack(torch.cat([_up(x), rev[self.start_level + i]], dim=1))
    return self.logits(x)

  def train_forward(self, image, segmentation):
    """`image [B,C,H,W]`, `segmentation [B,H,W]` int64 -> logits, KL `[L]`."""
    features = self.prior.encode(image)
    one_hot = F.one_hot(segmentation, self.num_classes).permute(0, 3, 1, 2)
    posterior_in = torch.cat([one_hot.to(image.dtype), image], dim=1)
    _, q, z = self.posterior.decode(self.posterior.encode(posterior_in))
    x, p, _ = self.prior.decode(features, latents=z)
    kl = torch.stack([_kl(qd, pd) for qd, pd in zip(q, p)])
    return self._stitch(features, x), kl

  @torch.no_grad()
  def sample(self, image, num_samples: int, chunk: int = 16):
    """Encoder once; decoder over `num_samples`, `chunk` samples batched.

    `image [1, C, H, W]` -> logits `[N, K, H, W]`.
    """
    features = self.prior.encode(image)
    out = []
    for start in range(0, num_samples, chunk):
      n = min(chunk, num_samples - start)
      batch = [f.expand(n, -1, -1, -1) for f in features]
      x, _, _ = self.prior.decode(batch)
      out.append(self._stitch(batch, x))
    return torch.cat(out)


def _kl(q: Tuple[torch.Tensor, torch.Tensor],
        p: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
  """KL(q || p) of diagonal Gaussians, summed per image, batch mean."""
  (mq, lq), (mp, lp) = q, p
  kl = lp - lq + ((2 * lq).exp() + (mq - mp) ** 2) / (2 * (2 * lp).exp()) - 0.5
  return kl.flatten(1).sum(1).mean()


class GecoLoss(nn.Module):
  """GECO as coded (docs/paper_notes.md#12-geco-as-coded):
  `lambda * (ma - kappa * N) + KL`,
  `lambda = softplus(v)^2` with v's gradient scaled by `-rate`."""

  def __init__(self, kappa: float, decay: float, rate: float):
    super().__init__()
    self.v = nn.Parameter(torch.tensor(math.log(math.expm1(1.0))))
    self.kappa, self.decay, self.rate = kappa, decay, rate
    self.register_buffer('moving_average', torch.zeros(()))
    self.initialized = False

  def forward(self, rec_sum, num_pixels, kl_sum):
    rec = rec_sum.detach()
    average = (self.decay * self.moving_average + (1 - self.decay) * rec
               if self.initialized else rec)
    self.moving_average, self.initialized = average, True
    straight_through = rec_sum + (average - rec_sum).detach()
    v = -self.rate * self.v + ((1 + self.rate) * self.v).detach()
    return F.softplus(v) ** 2 * (straight_through - self.kappa * num_pixels) + (
        kl_sum)


def reconstruction_loss(logits, segmentation, top_k_fraction: float):
  """Stochastic top-k cross-entropy: `(rec_sum, num_pixels)`."""
  xe = F.cross_entropy(logits, segmentation, reduction='none')  # [B, H, W]
  flat = xe.detach().flatten()
  k = max(1, int(flat.numel() * top_k_fraction))
  uniform = torch.rand_like(flat)
  score = (flat / flat.sum()).log() - (-(uniform + 1e-20).log() + 1e-20).log()
  mask = torch.zeros_like(flat).scatter_(0, score.topk(k).indices, 1.0)
  mask = mask.view_as(xe)
  rec_sum = (mask * xe).flatten(1).sum(1).mean()
  return rec_sum, mask.flatten(1).sum(1).mean()


def make_train_step(model: HierarchicalProbUNet, loss_config, lr: float,
                    b1: float, b2: float, eps: float):
  """`step(image, segmentation) -> loss` (one Adam step, in place)."""
  geco = GecoLoss(loss_config['kappa'], loss_config['geco_decay'],
                  loss_config['geco_rate'])
  optimizer = torch.optim.Adam(list(model.parameters()) + [geco.v], lr=lr,
                               betas=(b1, b2), eps=eps)
  kernels = [p for name, p in model.named_parameters()
             if name.endswith('weight')]

  def step(image, segmentation):
    optimizer.zero_grad(set_to_none=True)
    logits, kl = model.train_forward(image, segmentation)
    rec_sum, num_pixels = reconstruction_loss(
        logits, segmentation, loss_config['top_k_fraction'])
    loss = geco(rec_sum, num_pixels, kl.sum())
    loss = loss + 0.5 * loss_config['weight_decay'] * sum(
        (w * w).sum() for w in kernels)
    loss.backward()
    optimizer.step()
    return loss.detach()

  return step


def haiku_name(torch_name: str, start_level: int) -> str:
  """The `hpunet_jax` module of a torch module path, e.g.
  `prior.encoder.0.1.convs.2` -> `hpunet/~/prior/~encode/encoder_level0_block1/
  conv3x3_2`."""
  parts = torch_name.split('.')
  if parts[0] == 'logits':
    return 'hpunet/~/stitching_decoder/logits'
  if parts[0] == 'stitching':
    prefix = 'hpunet/~/stitching_decoder'
    stack, level, rest = 'decoder', int(parts[1]) + start_level, parts[2:]
  else:
    method = '~encode' if parts[1] == 'encoder' else '~decode'
    prefix = f'hpunet/~/{parts[0]}/{method}'
    if parts[1] == 'latent_convs':
      return f'{prefix}/latent_level{parts[2]}'
    stack, level, rest = parts[1], int(parts[2]), parts[3:]
  conv = {'convs': f'conv3x3_{rest[-1]}', 'out': 'conv1x1_out',
          'skip': 'skip_projection'}[rest[1]]
  return f'{prefix}/{stack}_level{level}_block{rest[0]}/{conv}'


@torch.no_grad()
def load_haiku_params(model: HierarchicalProbUNet, params) -> None:
  """Copies `hpunet_jax` parameters (`w [kh, kw, C_in, C_out]`, `b`) into
  `model` (`weight [C_out, C_in, kh, kw]`, `bias`), in place."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  for name, module in model.named_modules():
    if isinstance(module, nn.Conv2d):
      leaves = params[haiku_name(name, model.start_level)]
      module.weight.copy_(torch.from_numpy(
          np.asarray(leaves['w']).transpose(3, 2, 0, 1).copy()))
      module.bias.copy_(torch.from_numpy(np.asarray(leaves['b']).copy()))
