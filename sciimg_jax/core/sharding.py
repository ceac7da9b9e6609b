"""Data parallelism with a device mesh: batch split on 'data', everything else replicated."""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(devices=None):
  """A 1D mesh over `devices` (default: all devices of all processes) with axis 'data'."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("data",))


def local_mesh():
  """A 1D mesh over this process's devices: inference, where every process takes its own
  cases (`distributed.process_share`). With one process, the same as `make_mesh()`."""
  return make_mesh(jax.local_devices())


def replicated(mesh):
  return NamedSharding(mesh, P())


def batch_sharded(mesh):
  """Leading (batch) dimension split across the 'data' axis."""
  return NamedSharding(mesh, P("data"))


def shard_batch(batch, mesh):
  """Turns this process's numpy batch (a dict) into global arrays split on 'data'.

  Non-numeric entries (case names) stay on the host.
  """
  sharding = batch_sharded(mesh)
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    if v.dtype.kind in "fiub":
      if v.shape[0] % mesh.devices.size and jax.process_count() == 1:
        raise ValueError(f"batch size {v.shape[0]} is not divisible by {mesh.devices.size} devices")
      out[k] = jax.make_array_from_process_local_data(sharding, v)
  return out
