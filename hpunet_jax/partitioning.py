"""Per-level sharding of feature maps under spatial batch partitioning.

A batch `[B, H, W, C]` may be split over a 2-D device mesh: the batch over a
data axis, the height over a spatial axis (paper Appx. D.3). Left to itself,
XLA's SPMD partitioner also tries to split the coarse levels, whose height is
smaller than the spatial axis (a 64x64 U-Net reaches 2x2 and 1x1), and there
it computes wrong gradients: with both mesh axes > 1 the weight gradients of
3x3 convolutions on a 2x2 map come out several times too large
(docs/spatial_partitioning.md).

`feature_map` pins each convolution's input and output, and each resize's
output, `pooling_input` each pooling's input (and, through the transpose of
`with_sharding_constraint`, their cotangents in the backward pass): the
height stays split while it divides evenly into the spatial axis with at
least `min_rows_per_device` rows on each device, and is replicated over that
axis below; the batch stays split over the data axis.

Which mesh and axes (`active_partitioning`), first match wins:
1. inside `spatial_partitioning(mesh, batch_axis, spatial_axis)`: those;
2. the mesh set with `jax.set_mesh(mesh)` (or `use_abstract_mesh`), else the
   mesh the feature map itself lives on (an input sharded by `device_put` or
   `jit`'s `in_shardings`), with the axes `data` and `spatial` and
   `MIN_ROWS_PER_DEVICE`;
3. none on one device, or when at most one mesh axis has more than one
   device (batch-only or height-only splits, which XLA gets right);
4. otherwise (several split axes, not named `data` and `spatial`) tracing
   stops with a `MeshAxesError`: the model cannot tell which axis splits the
   height and will not return gradients that may be wrong.
"""
import contextlib
import contextvars
from typing import Iterator, NamedTuple, Optional, Union

import jax
from jax.sharding import NamedSharding, PartitionSpec

# The mesh axes that split the batch and the height unless
# `spatial_partitioning` names others.
BATCH_AXIS = 'data'
SPATIAL_AXIS = 'spatial'
# A feature map's height stays split over the spatial axis only while every
# device holds at least this many rows: with one row per device on a 2-row
# map (mesh (4, 2), 64x64 model) XLA's partitioner gave gradients off by up
# to 60x (docs/spatial_partitioning.md); two rows gave exact gradients on
# every mesh and geometry tested (tests/test_sharding.py).
MIN_ROWS_PER_DEVICE = 2

AnyMesh = Union[jax.sharding.Mesh, jax.sharding.AbstractMesh]


class MeshAxesError(ValueError):
  """A multi-device mesh whose batch and spatial axes the model cannot tell."""


class SpatialPartitioning(NamedTuple):
  """The mesh a model is traced for and the names of its two axes."""
  mesh: AnyMesh
  batch_axis: str
  spatial_axis: str
  min_rows_per_device: int


_ACTIVE: contextvars.ContextVar[Optional[SpatialPartitioning]] = (
    contextvars.ContextVar('spatial_partitioning', default=None))


def _checked(mesh: AnyMesh, batch_axis: str, spatial_axis: str,
             min_rows_per_device: int) -> SpatialPartitioning:
  if min_rows_per_device < 1:
    raise ValueError(
        f'min_rows_per_device must be >= 1, got {min_rows_per_device}.')
  for axis in (batch_axis, spatial_axis):
    if axis not in mesh.axis_names:
      raise ValueError(f'Mesh axes {mesh.axis_names} have no axis {axis!r}.')
  return SpatialPartitioning(mesh, batch_axis, spatial_axis,
                             min_rows_per_device)


@contextlib.contextmanager
def spatial_partitioning(
    mesh: AnyMesh, batch_axis: str = BATCH_AXIS,
    spatial_axis: str = SPATIAL_AXIS,
    min_rows_per_device: int = MIN_ROWS_PER_DEVICE) -> Iterator[None]:
  """While active, `feature_map` constrains feature maps to `mesh`.

  Only needed for a mesh whose axes are not named `data` and `spatial`
  (those are found through `jax.set_mesh`). Enter it around the code that
  *traces* the model (inside the jitted function's body: jit's cache does
  not see this context).

  Args:
    mesh: the mesh (Auto axis types).
    batch_axis: the mesh axis that splits the batch dimension.
    spatial_axis: the mesh axis that splits the height.
    min_rows_per_device: a level's height stays split only if every device
      then holds at least this many rows.
  """
  token = _ACTIVE.set(_checked(mesh, batch_axis, spatial_axis,
                               min_rows_per_device))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def active_partitioning(x: jax.Array) -> Optional[SpatialPartitioning]:
  """The partitioning that applies to feature map `x` (module docstring),
  None where XLA's own partitioning is exact.

  Raises:
    MeshAxesError: `x` is traced for a mesh with several split axes that are
      not named `data` and `spatial`, outside `spatial_partitioning`.
  """
  active = _ACTIVE.get()
  if active is not None:
    return active
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    mesh = jax.typeof(x).sharding.mesh
  if mesh.empty or mesh.size == 1:
    return None
  if BATCH_AXIS in mesh.axis_names and SPATIAL_AXIS in mesh.axis_names:
    return SpatialPartitioning(mesh, BATCH_AXIS, SPATIAL_AXIS,
                               MIN_ROWS_PER_DEVICE)
  if sum(size > 1 for size in mesh.axis_sizes) <= 1:
    return None
  raise MeshAxesError(
      f'The model is traced for a mesh with axes {dict(mesh.shape)}, which '
      f'has no {BATCH_AXIS!r} and {SPATIAL_AXIS!r} axes: it cannot tell '
      'which axis splits the height, and left to itself XLA computes wrong '
      'gradients for the levels coarser than the spatial split. Name the '
      f'mesh axes ({BATCH_AXIS!r}, {SPATIAL_AXIS!r}) and trace under '
      '`jax.set_mesh(mesh)`, or trace inside '
      '`hpunet_jax.partitioning.spatial_partitioning(mesh, batch_axis=..., '
      'spatial_axis=...)`.')


def _axis_type(mesh: AnyMesh, axis: str) -> jax.sharding.AxisType:
  return mesh.axis_types[mesh.axis_names.index(axis)]


def _check_auto_axes(active: SpatialPartitioning) -> None:
  """Raises MeshAxesError unless the batch and spatial axes are `Auto`:
  with `Explicit` axes JAX's own sharding rules reject a split height
  (pooling, up-sampling) and constraints act as assertions."""
  types = {axis: _axis_type(active.mesh, axis).name
           for axis in (active.batch_axis, active.spatial_axis)}
  if any(t != jax.sharding.AxisType.Auto.name for t in types.values()):
    raise MeshAxesError(
        f'The model is traced for a mesh whose axes have the types {types}; '
        'it splits feature maps over Auto axes only. Build the mesh with '
        '`jax.make_mesh(shape, names, '
        'axis_types=(jax.sharding.AxisType.Auto,) * len(names))`.')


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

  The identity where `active_partitioning` is None, the spatial axis has one
  device (then XLA's batch partitioning is already exact) or is `Manual`
  (inside `shard_map` over it, where each device computes its own block).

  Raises:
    MeshAxesError: see `active_partitioning`; or the batch or spatial axis
      is `Explicit`.
  """
  active = active_partitioning(x)
  if (active is None or active.mesh.shape[active.spatial_axis] == 1
      or _axis_type(active.mesh, active.spatial_axis)
      == jax.sharding.AxisType.Manual):
    return x
  _check_auto_axes(active)
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
