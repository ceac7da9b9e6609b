"""Data that several processes prepare into one cache folder, without racing.

With `main.py --num_processes N`, every process runs the same job and would build the
same prepared data (the embedded subjects, the TFDS slices, the prepared volumes) into the
same `data.cache_dir` at once: TFDS and the generators write atomically, but two builders
of one dataset can still trip over each other's temporary folders. `process_0_first`
makes process 0 build first while the others wait at a barrier; then the others call the
same function, which finds the data made and only reads it. (On hosts that do not share
the cache folder, each host builds its own copy in turn: the same data.)

A decorated function called from inside another runs directly: every process nests alike,
so the barriers stay matched.
"""

import functools
import threading

import jax
from jax.experimental import multihost_utils

_inside = threading.local()


def process_0_first(prepare):
  """Decorates a data-preparation function: process 0 runs it first, then the others."""

  @functools.wraps(prepare)
  def wrapper(*args, **kwargs):
    if jax.process_count() == 1 or getattr(_inside, "depth", 0):
      return prepare(*args, **kwargs)
    _inside.depth = 1
    try:
      if jax.process_index() == 0:
        result = prepare(*args, **kwargs)
      multihost_utils.sync_global_devices(f"prepared {prepare.__module__}.{prepare.__name__}")
      if jax.process_index() != 0:
        result = prepare(*args, **kwargs)
      return result
    finally:
      _inside.depth = 0

  return wrapper
