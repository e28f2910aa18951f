"""Device mesh and shardings for data- and spatially-partitioned training.

The trainer runs one `jax.jit` step over a 2-D mesh with axes
`('data', 'spatial')`:

* batch arrays (`image [B,H,W,C]`, `segmentation [B,H,W]`, `mask [B,H,W]`) are
  split over the batch dimension along `data` and over the image height along
  `spatial` ("spatial batch partitioning", paper Appx. D.3);
* the train state (parameters, optimiser and GECO state, rng) is replicated;
* inside the model, which reads the mesh (`hpunet_jax.partitioning`), every
  convolution's input and output keeps the batch split and keeps the height
  split only while the level's height divides into the spatial axis with
  `MIN_ROWS_PER_DEVICE` rows per device; coarser levels are replicated over
  that axis (XLA's partitioner computes wrong gradients there,
  docs/spatial_partitioning.md).

The mesh uses `Auto` axis types: the XLA partitioner then propagates the height
split through the convolutions (adding halo exchanges for SAME padding). With
`Explicit` axes (the current JAX default for `jax.make_mesh`) a sharded height
would have to be handled by hand in every op.

Multi-host: every process loads its own `B / P` examples of the global batch
(`P` processes) and `global_batch` assembles the global arrays. This needs each
process's devices to hold whole rows of the mesh's `data` axis (`make_mesh`
lays devices out process by process), so the `data` axis size must be a
multiple of the process count and the spatial axis stays within one host.
"""
from typing import Any, Mapping, Sequence, Tuple

from absl import logging
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

from hpunet_jax import partitioning

# The axis names the model's feature maps look for on the mesh.
MESH_AXES = (partitioning.BATCH_AXIS, partitioning.SPATIAL_AXIS)
# The fewest rows of a level's height a device holds before that level is
# replicated over the spatial axis (the model's rule, defined there).
MIN_ROWS_PER_DEVICE = partitioning.MIN_ROWS_PER_DEVICE


class MeshShapeError(ValueError):
  """The requested mesh does not fit the available devices or processes."""


def resolve_mesh_shape(mesh_shape: Sequence[int],
                       num_devices: int) -> Tuple[int, int]:
  """Replaces a `-1` entry of a (data, spatial) shape to fill the devices.

  Args:
    mesh_shape: `(data, spatial)`; at most one entry may be `-1`.
    num_devices: the number of devices available; a shape without `-1` may
      cover fewer (`make_mesh` then uses the first ones).

  Returns:
    The concrete `(data, spatial)` shape.

  Raises:
    MeshShapeError: wrong length, bad entries, a `-1` that cannot fill the
      devices, or a product > `num_devices`.
  """
  shape = tuple(int(s) for s in mesh_shape)
  if len(shape) != 2:
    raise MeshShapeError(
        f'mesh_shape must be (data, spatial), got {tuple(mesh_shape)}.')
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise MeshShapeError(
        f'mesh_shape {shape}: entries must be positive, at most one may be -1.')
  if -1 in shape:
    known = -np.prod(shape)  # product of the positive entry
    if num_devices % known:
      raise MeshShapeError(
          f'mesh_shape {shape} cannot cover {num_devices} devices.')
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if np.prod(shape) > num_devices:
    raise MeshShapeError(
        f'mesh_shape {shape} needs {np.prod(shape)} devices, '
        f'but {num_devices} are available.')
  return shape


def make_mesh(mesh_shape: Sequence[int], devices=None) -> Mesh:
  """Builds the `('data', 'spatial')` mesh with Auto axis types.

  Args:
    mesh_shape: `(data, spatial)` with at most one `-1`; `(-1, 1)` puts all
      devices on the batch. A shape covering fewer devices than given uses
      the first ones and logs it (single process only: with several
      processes every process must feed its devices).
    devices: devices to use; default all `jax.devices()` (all processes).

  Returns:
    A `jax.sharding.Mesh`.
  """
  devices = jax.devices() if devices is None else list(devices)
  shape = resolve_mesh_shape(mesh_shape, len(devices))
  num_used = int(np.prod(shape))
  if num_used < len(devices):
    if jax.process_count() > 1:
      raise MeshShapeError(
          f'mesh_shape {shape} covers {num_used} of {len(devices)} devices; '
          f'with {jax.process_count()} processes the mesh must cover them '
          'all.')
    logging.info('mesh_shape %s uses the first %d of %d devices.', shape,
                 num_used, len(devices))
    devices = devices[:num_used]
  if shape[0] % jax.process_count():
    raise MeshShapeError(
        f'mesh data axis {shape[0]} must be a multiple of the process count '
        f'{jax.process_count()}: each process feeds whole batch rows.')
  return jax.make_mesh(
      shape, MESH_AXES,
      axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
      devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of a fully replicated array (params, optimiser state)."""
  return NamedSharding(mesh, PartitionSpec())


def batch_spec(ndim: int) -> PartitionSpec:
  """Spec of a `[B, H, ...]` batch array: B over data, H over spatial."""
  if ndim < 2:
    raise ValueError(
        f'batch arrays need at least [B, H] dims, got ndim={ndim}.')
  return PartitionSpec('data', 'spatial', *([None] * (ndim - 2)))


def batch_shardings(mesh: Mesh, batch: Mapping[str, Any]) -> dict:
  """Per-key shardings for a batch dict (arrays or ShapeDtypeStructs)."""
  return {k: NamedSharding(mesh, batch_spec(len(v.shape)))
          for k, v in batch.items()}


def check_batch_divisible(mesh: Mesh, global_batch_size: int,
                          image_size: Sequence[int]) -> None:
  """Raises MeshShapeError when the batch or height do not split evenly."""
  data, spatial = mesh.shape['data'], mesh.shape['spatial']
  if global_batch_size % data:
    raise MeshShapeError(
        f'batch_size {global_batch_size} is not divisible by the mesh data '
        f'axis {data}.')
  if image_size[0] % spatial:
    raise MeshShapeError(
        f'image height {image_size[0]} is not divisible by the mesh spatial '
        f'axis {spatial}.')


def global_batch(mesh: Mesh, local_batch: Mapping[str, np.ndarray]) -> dict:
  """Assembles this process's batch slice into global sharded jax arrays.

  Args:
    mesh: the training mesh.
    local_batch: dict of numpy arrays `[B / P, H, ...]` for this process.

  Returns:
    Dict of global `jax.Array`s `[B, H, ...]` sharded by `batch_spec`.
  """
  out = {}
  for key, value in local_batch.items():
    value = np.asarray(value)
    sharding = NamedSharding(mesh, batch_spec(value.ndim))
    global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
    out[key] = jax.make_array_from_process_local_data(
        sharding, value, global_shape)
  return out
