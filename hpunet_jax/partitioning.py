"""Per-level sharding of feature maps under spatial batch partitioning.

The trainer splits `[B, H, W, C]` batches over a 2-D device mesh: the batch
over a data axis, the height over a spatial axis (paper Appx. D.3). Left to
itself, XLA's SPMD partitioner also tries to split the coarse levels, whose
height is smaller than the spatial axis (a 64x64 U-Net reaches 2x2 and 1x1),
and there it computes wrong gradients: with both mesh axes > 1 the weight
gradients of 3x3 convolutions on a 2x2 map come out twice too large, or far
off when each device holds one of its 2 rows (docs/spatial_partitioning.md).

`feature_map` pins each convolution's input and output, and each resize's
output, `pooling_input` each pooling's input (and, through the
transpose of `with_sharding_constraint`, their cotangents in the backward
pass): the height stays split while it divides evenly into the spatial axis
with at least `min_rows_per_device` rows on each device, and is replicated
over that axis below; the batch stays split over the data axis. Outside a `spatial_partitioning` context (evaluation, sampling, tests on
one device) it is the identity.
"""
import contextlib
import contextvars
from typing import Iterator, NamedTuple, Optional

import jax
from jax.sharding import NamedSharding, PartitionSpec


class SpatialPartitioning(NamedTuple):
  """The mesh a model is traced for and the names of its two axes."""
  mesh: jax.sharding.Mesh
  batch_axis: str
  spatial_axis: str
  min_rows_per_device: int


_ACTIVE: contextvars.ContextVar[Optional[SpatialPartitioning]] = (
    contextvars.ContextVar('spatial_partitioning', default=None))


@contextlib.contextmanager
def spatial_partitioning(mesh: jax.sharding.Mesh, batch_axis: str,
                         spatial_axis: str,
                         min_rows_per_device: int) -> Iterator[None]:
  """While active, `feature_map` constrains feature maps to `mesh`.

  Enter it around the code that *traces* the model (inside the jitted
  function's body).

  Args:
    mesh: the training mesh (Auto axis types).
    batch_axis: the mesh axis that splits the batch dimension.
    spatial_axis: the mesh axis that splits the height.
    min_rows_per_device: a level's height stays split only if every device
      then holds at least this many rows.
  """
  if min_rows_per_device < 1:
    raise ValueError(
        f'min_rows_per_device must be >= 1, got {min_rows_per_device}.')
  for axis in (batch_axis, spatial_axis):
    if axis not in mesh.axis_names:
      raise ValueError(f'Mesh axes {mesh.axis_names} have no axis {axis!r}.')
  token = _ACTIVE.set(SpatialPartitioning(mesh, batch_axis, spatial_axis,
                                          min_rows_per_device))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def feature_map_spec(shape, mesh_shape, batch_axis: str, spatial_axis: str,
                     min_rows_per_device: int) -> PartitionSpec:
  """The spec of a `[B, H, W, C]` feature map on a mesh of `mesh_shape`.

  Args:
    shape: `(B, H, W, C)`.
    mesh_shape: mapping from axis name to size (`mesh.shape`).
    batch_axis: the axis splitting B.
    spatial_axis: the axis splitting H.
    min_rows_per_device: the fewest rows of H a device may hold.

  Returns:
    `PartitionSpec(batch_axis or None, spatial_axis or None, None, None)`:
    B is split when it divides evenly into its axis, H when it does and each
    device gets `>= min_rows_per_device` rows (with 2: a 4x4 map on a
    spatial axis of 2 stays split, a 2x2 map is replicated over that axis).
  """
  batch, height = shape[0], shape[1]
  batch_spec = batch_axis if batch % mesh_shape[batch_axis] == 0 else None
  num_shards = mesh_shape[spatial_axis]
  split_height = (height % num_shards == 0
                  and height // num_shards >= min_rows_per_device)
  height_spec = spatial_axis if split_height else None
  return PartitionSpec(batch_spec, height_spec, *([None] * (len(shape) - 2)))


def feature_map(x: jax.Array, height: Optional[int] = None) -> jax.Array:
  """Constrains a `[B, H, W, C]` feature map as `feature_map_spec` says.

  Args:
    x: `[B, H, W, C]`.
    height: the height whose rule applies (default `H`); `pooling_input`
      passes the pooled height.

  The identity outside `spatial_partitioning` or on a mesh without a spatial
  split (then XLA's batch partitioning is already exact).
  """
  active = _ACTIVE.get()
  if active is None or active.mesh.shape[active.spatial_axis] == 1:
    return x
  shape = (x.shape[0], x.shape[1] if height is None else height) + x.shape[2:]
  spec = feature_map_spec(shape, active.mesh.shape, active.batch_axis,
                          active.spatial_axis, active.min_rows_per_device)
  return jax.lax.with_sharding_constraint(x, NamedSharding(active.mesh, spec))


def pooling_input(x: jax.Array, factor: int) -> jax.Array:
  """Constrains the input `[B, H, W, C]` of a `factor`x pooling to the spec of
  its output level: where that level is replicated over the spatial axis, the
  rows are gathered *before* pooling (pooling split rows into a replicated
  output gave wrong gradients, docs/spatial_partitioning.md)."""
  return feature_map(x, height=x.shape[1] // factor)
