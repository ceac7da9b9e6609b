"""Starting JAX on several processes (hosts, or CPU processes on one machine).

`initialize` wraps `jax.distributed.initialize`:
  * with no address it lets JAX find the cluster (SLURM's `srun`, a TPU pod slice, or the
    JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables);
  * CPU devices talk over gloo (`jax_cpu_collectives_implementation`), so that 2 local CPU
    processes can try a multi-host run; the setting touches only the CPU backend;
  * a coordinator that cannot be reached fails after `timeout_s` with one line (checked
    before XLA's client, which aborts with a stack trace); processes that do not all
    arrive make the others stop after `timeout_s`, and one that dies later makes the
    others stop within `heartbeat_s` (XLA's coordination service), never a hang.
"""

import socket
import time

import jax

from sciimg_jax.core.errors import InputError


def _host_port(address):
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise InputError("--coordinator_address", f"expected host:port, got {address!r}")
  return host.strip("[]"), int(port)


def wait_for_coordinator(address, timeout_s):
  """Returns once `address` accepts a connection; stops with one line after `timeout_s`.

  (XLA's own client aborts the process with a C++ stack trace when it cannot register.)
  """
  host, port = _host_port(address)
  deadline, reason = time.monotonic() + timeout_s, "no answer"
  while time.monotonic() < deadline:
    try:
      with socket.create_connection((host, port), timeout=min(2.0, timeout_s)):
        return
    except OSError as e:
      reason = e.strerror or type(e).__name__
      time.sleep(0.5)
  raise InputError(address, f"the coordinator cannot be reached ({reason}) after {timeout_s} s; "
                   "start process 0 there first, or check the address and port")


def initialize(coordinator_address=None, num_processes=None, process_id=None, *,
               timeout_s=300, heartbeat_s=100):
  """Joins this process to the others; returns (process_index, process_count)."""
  given = [v is not None for v in (coordinator_address, num_processes, process_id)]
  if any(given) and not all(given):
    raise InputError("--coordinator_address/--num_processes/--process_id",
                     "give all three, or none to let JAX read them from the cluster")
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise InputError("--process_id", f"{process_id} is not in [0, {num_processes})")
  if coordinator_address is not None and process_id != 0:
    wait_for_coordinator(coordinator_address, timeout_s)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=int(timeout_s),
                               heartbeat_timeout_seconds=int(heartbeat_s))
  except (RuntimeError, ValueError) as e:  # XlaRuntimeError is a RuntimeError
    where = coordinator_address or "the cluster's coordinator"
    reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise InputError(where, f"could not start process {process_id} of {num_processes} "
                     f"within {timeout_s} s: {reason}") from e
  return jax.process_index(), jax.process_count()
