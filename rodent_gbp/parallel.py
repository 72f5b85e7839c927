"""One parallel path for 1 or N devices, on one or many hosts (docs/design.md#parallelism).

A 1-D ``jax.sharding.Mesh`` with the axis ``"data"`` spans every device of the
run (one device is a mesh of one). Batches are split along their first axis
over that axis (``NamedSharding(mesh, P("data"))``), params and other shared
arrays are replicated (``NamedSharding(mesh, P())``), and the *same* jitted
function runs whatever the device count: ``jax.jit`` propagates the input
shardings and inserts the cross-device reductions itself. So a loss pooled
over the batch (the soft Dice of ``train.dice_loss`` sums over all slices) is
the global loss, and its gradient is the global gradient: no ``pmap``, no
hand-written gradient averaging that could be forgotten.

Multi-host runs (one process per host, ``jax.distributed``):

* :func:`initialize_distributed` must run before anything touches a device.
* Every process walks the same sequence of global batches (their order is a
  pure function of seed and epoch), but hands over only its own rows:
  ``shard_batch(local_share(batch, mesh), mesh)`` builds the global array with
  ``jax.make_array_from_process_local_data``; nothing crosses hosts but the
  collectives XLA inserts.
* :func:`to_host` brings a result back to every process (an all-gather across
  processes when the array is split over them).
* :func:`process_shard` splits a list (animals, slices) into per-process
  blocks for work that needs no collective at all (e.g. evaluating disjoint
  test animals on each host's own devices).

Batches the device count does not divide:

* evaluation pads (:func:`pad_batch`, repeating the last row) and masks the
  padding out: per-slice outputs of padded rows are dropped, counts get a
  ``valid`` mask. Results are exactly those of the unpadded batch.
* training refuses (:func:`check_divisible`): a padded row would change the
  batch statistics of the pooled Dice and the per-slice random augmentation
  draws, so the update would no longer be the 1-device update. Pick a
  ``batch_size`` that is a multiple of the device count.

Example::

  mesh = parallel.make_mesh()
  state = parallel.replicate(state, mesh)
  batch = parallel.shard_batch(parallel.local_share(numpy_batch, mesh), mesh)
  state, metrics = step_fn(state, batch)     # the 1-device jitted step
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence, TypeVar

import jax
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from rodent_gbp.errors import UsageError

PyTree = Any
T = TypeVar("T")

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Joins a multi-host run via ``jax.distributed.initialize`` when asked.

  Call it first, before any JAX computation. With no coordinator address it
  does nothing (a single-process run), so binaries can always call it with
  their flags.

  Args:
    coordinator_address: ``host:port`` of process 0's coordinator service.
    num_processes: total number of processes (hosts).
    process_id: this process's index in [0, num_processes).

  Returns:
    True if ``jax.distributed.initialize`` was called.
  """
  if not coordinator_address:
    if num_processes not in (None, 1) or process_id not in (None, 0):
      raise UsageError("--num_processes / --process_id given without --coordinator_address")
    return False
  if num_processes is None or process_id is None:
    raise UsageError("a multi-host run needs --coordinator_address, --num_processes and "
                     "process_id together")
  if not 0 <= process_id < num_processes:
    raise UsageError(f"--process_id {process_id} out of range for {num_processes} processes")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  return True


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis ``"data"`` over ``devices`` (default: all devices).

  The axis type is ``Auto``: jit propagates the input shardings (GSPMD), so
  library functions need no sharding annotations of their own.
  """
  devices = list(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError("make_mesh needs at least one device")
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                       devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Splits axis 0 (the batch) over the mesh's data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device of the mesh."""
  return NamedSharding(mesh, P())


def _multi_process(mesh: Mesh) -> bool:
  return len({d.process_index for d in mesh.devices.flat}) > 1


def padded_size(n: int, multiple: int) -> int:
  """The smallest multiple of ``multiple`` that is >= n (and >= multiple)."""
  return max(multiple, -(-n // multiple) * multiple)


def pad_batch(batch: dict[str, np.ndarray], multiple: int, *, size: int | None = None
              ) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """Pads every array's axis 0 to a multiple of ``multiple`` (or to ``size``).

  The one last-batch padder of the package: training evaluation, the
  removal pipeline and inference all pad through it.

  Padding repeats the last row (finite, in-range values, so no NaN or
  out-of-range label reaches the computation); the returned mask says which
  rows are real, and callers drop or zero-weight the rest.

  Args:
    batch: dict of arrays with a common leading size n.
    multiple: usually the device count (``mesh.size``).
    size: pad to exactly this many rows instead (a fixed batch shape, so a
      jitted function compiles once); must be >= n.

  Returns:
    (padded batch, valid (n_padded,) bool: True for the n real rows).
  """
  sizes = {k: len(v) for k, v in batch.items()}
  if len(set(sizes.values())) != 1:
    raise ValueError(f"batch arrays disagree on the leading size: {sizes}")
  n = next(iter(sizes.values()))
  if n == 0:
    raise ValueError("cannot pad an empty batch")
  if size is None:
    size = padded_size(n, multiple)
  elif size < n:
    raise ValueError(f"cannot pad {n} rows to {size}")
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    out[k] = v if size == n else np.concatenate([v, np.repeat(v[-1:], size - n, 0)])
  return out, np.arange(size) < n


def check_divisible(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
  """Raises a clear error when the mesh cannot split a batch evenly (training)."""
  if batch_size % mesh.size:
    raise UsageError(
        f"{what}={batch_size} cannot be split over {mesh.size} devices; training "
        f"does not pad (padding would change the pooled Dice and the augmentation "
        f"draws), so use a multiple of {mesh.size}, e.g. "
        f"{padded_size(batch_size, mesh.size)}")


def local_rows(mesh: Mesh, global_rows: int) -> slice:
  """The block of rows of a global batch that this process's devices hold.

  With one process this is every row. Derived from the sharding itself, so it
  follows whatever device order the mesh has.
  """
  check_divisible(global_rows, mesh, "global batch")
  index_map = batch_sharding(mesh).addressable_devices_indices_map((global_rows,))
  starts = sorted(idx[0].indices(global_rows)[:2] for idx in index_map.values())
  for (_, stop), (start, _) in zip(starts, starts[1:]):
    if stop != start:
      raise ValueError("this process's devices do not hold one contiguous block of the "
                       "batch; build the mesh with each host's devices adjacent")
  return slice(starts[0][0], starts[-1][1])


def local_share(batch: PyTree, mesh: Mesh) -> PyTree:
  """This process's rows of a global (host numpy) batch; all of it in one process."""
  leaves = jax.tree_util.tree_leaves(batch)
  rows = local_rows(mesh, len(leaves[0]))
  return jax.tree_util.tree_map(lambda x: np.asarray(x)[rows], batch)


def shard_batch(batch: PyTree, mesh: Mesh) -> PyTree:
  """Places a batch split over the data axis; returns global ``jax.Array``s.

  Args:
    batch: pytree (usually a dict) of host arrays with leading axis = this
      process's rows (in a one-process run: the whole batch). Use
      :func:`local_share` to cut them from a global batch, or pass rows this
      host loaded itself.
    mesh: from :func:`make_mesh`.

  Returns:
    The same pytree of arrays of the *global* batch, sharded ``P("data")``.
  """
  sharding = batch_sharding(mesh)
  local = len(mesh.local_devices)
  for x in jax.tree_util.tree_leaves(batch):
    if np.shape(x)[0] % local:
      raise ValueError(
          f"a local batch of {np.shape(x)[0]} rows cannot be split over {local} "
          f"devices; pad it first (parallel.pad_batch)")
  if not _multi_process(mesh):
    return jax.device_put(batch, sharding)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def replicate(tree: T, mesh: Mesh) -> T:
  """Places a full copy of every leaf on every device of the mesh.

  In a multi-process run every process must pass the same values (params
  from the same seed or checkpoint); each process fills only its own devices.
  """
  sharding = replicated(mesh)
  if not _multi_process(mesh):
    return jax.device_put(tree, sharding)

  def put(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.device_put(x, sharding)  # already global: reshard
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  return jax.tree_util.tree_map(put, tree)


def to_host(tree: PyTree) -> PyTree:
  """numpy copies of (possibly sharded) arrays, the same on every process.

  Arrays split over several processes are all-gathered across processes
  (a collective: every process must call this for the same arrays).
  """
  def get(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(jax.device_get(x))
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree_util.tree_map(get, tree)


def process_shard(items: Sequence[T], process_index: int | None = None,
                  process_count: int | None = None) -> list[T]:
  """This process's contiguous block of ``items`` (animals, slices, files).

  Blocks differ in length by at most one (the first ``len % count`` get the
  extra item); concatenating every process's block in process order gives
  ``items`` back. Defaults: ``jax.process_index()`` / ``jax.process_count()``.
  """
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if count < 1 or not 0 <= index < count:
    raise ValueError(f"process {index} of {count} is not a valid process")
  n = len(items)
  base, extra = divmod(n, count)
  start = index * base + min(index, extra)
  stop = start + base + (1 if index < extra else 0)
  return list(items[start:stop])


def describe(mesh: Mesh) -> str:
  """One line naming the devices, e.g. ``8 x cpu (1 process)``."""
  d = mesh.devices.flat[0]
  kind = getattr(d, "device_kind", d.platform)
  procs = len({x.process_index for x in mesh.devices.flat})
  return (f"{mesh.size} x {kind} ({procs} process{'es' if procs > 1 else ''})")


def is_lead() -> bool:
  """True on the process that writes shared files (process 0; always in 1-process runs)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches ``name``; a no-op in 1-process runs.

  Used around files that one process writes and all read: the lead writes,
  then everyone passes the barrier before reading or renaming.
  """
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def run_batched(fn, arrays: Mapping[str, np.ndarray], batch_size: int,
                mesh: Mesh | None = None) -> dict[str, np.ndarray]:
  """Calls jitted ``fn(**batch)`` on fixed-size batches (padded), one compile.

  The last batch is padded by :func:`pad_batch`, and the padded rows are
  dropped from every output, so the results are exactly per input row. Each
  batch is split over ``mesh`` (default: all devices); ``batch_size`` is
  rounded up to a multiple of the device count (the extra rows are padding).
  In a multi-host run every process calls this with the same arrays and hands
  over only its rows of each batch.

  Returns:
    dict of numpy outputs (``{"out": ...}`` when ``fn`` returns one array).
  """
  mesh = make_mesh() if mesh is None else mesh
  size = padded_size(batch_size, mesh.size)
  n = len(next(iter(arrays.values())))
  outs: dict[str, list[np.ndarray]] = {}
  for i in range(0, n, batch_size):
    j = min(i + batch_size, n)
    batch, _ = pad_batch({k: np.asarray(v[i:j]) for k, v in arrays.items()}, mesh.size,
                         size=size)
    out = fn(**shard_batch(local_share(batch, mesh), mesh))
    if not isinstance(out, dict):
      out = {"out": out}
    for k, v in to_host(out).items():
      outs.setdefault(k, []).append(np.asarray(v)[: j - i])
  return {k: np.concatenate(v) for k, v in outs.items()}
