"""What a compiled step needs in memory, against what the device has, before it runs.

A BraTS-size configuration on a small device used to die in its first step with a raw
`RESOURCE_EXHAUSTED: Out of memory allocating ... bytes` traceback. XLA knows the sizes of
a compiled program's arguments, outputs and temporaries before it runs (its memory
analysis); `check_fits` compares their sum with the device's memory and stops with one
line that names the sizes and the config keys that lower them.

Memory per device:
  * GPU/TPU: the allocator's `bytes_limit` (what JAX may use, after XLA's preallocation
    fraction);
  * CPU: the machine's physical memory or the cgroup's limit, whichever is lower, shared by
    the process's CPU devices (each device runs its own copy of the program).
"""

import os
import pathlib

import jax

from sciimg_jax.core.errors import InputError

GIB = 2**30


def compiled_bytes(compiled) -> int | None:
  """Bytes one device needs to run `compiled` (a `jax.stages.Compiled`), or None if unknown.

  Arguments + outputs + temporaries, less the outputs that reuse donated arguments'
  buffers (aliases); the generated code is counted too. An upper bound of the peak: XLA
  frees temporaries as it goes, but reports their total.
  """
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
             + stats.temp_size_in_bytes - stats.alias_size_in_bytes
             + stats.generated_code_size_in_bytes)


def _host_bytes() -> int:
  total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  limit = pathlib.Path("/sys/fs/cgroup/memory.max")  # cgroup v2; 'max' when unlimited
  if limit.exists() and limit.read_text().strip().isdigit():
    total = min(total, int(limit.read_text()))
  return total


def device_bytes(device=None) -> int | None:
  """Bytes one device may use (see the module docstring), or None if the backend won't say."""
  device = device or jax.local_devices()[0]
  if device.platform == "cpu":
    return _host_bytes() // jax.local_device_count()
  stats = device.memory_stats() or {}
  return stats.get("bytes_limit")


def check_fits(compiled, what: str, knobs: str, *, available: int | None = None):
  """Stops before `compiled` runs if it needs more memory than a device has.

  `what` names the program (the config file or job), `knobs` the config keys that lower its
  memory, in the order to try them. `available` overrides the device's memory (tests).
  Returns (needed, available) in bytes, either None when unknown.
  """
  needed = compiled_bytes(compiled)
  available = available if available is not None else device_bytes()
  if needed is not None and available is not None and needed > available:
    raise InputError(what, f"the compiled step needs {needed / GIB:.1f} GiB per device and "
                     f"the device has {available / GIB:.1f} GiB; lower it with {knobs}")
  return needed, available
