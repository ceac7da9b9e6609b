"""One of N processes of `test_multiprocess.py`: the trainer's step on a fixed global batch.

  python tests/multiprocess_worker.py ADDRESS NUM_PROCESSES PROCESS_ID OUT.npz

Each process holds 2 CPU devices and its contiguous share of the batch; process 0 writes the
parameters, the metrics of every step and the gradient norm to OUT.npz.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sciimg_jax.core import distributed  # noqa: E402


def main(address, num_processes, process_id, out):
  distributed.initialize(address, num_processes, process_id, timeout_s=120)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  import multiprocess_reference as ref  # pylint: disable=g-import-not-at-top

  assert jax.device_count() == 2 * num_processes, jax.devices()
  params, metrics = ref.run_steps(jax.devices(), process_id, num_processes)
  params = [np.asarray(multihost_utils.process_allgather(p, tiled=True)) for p in params]
  if process_id == 0:
    np.savez(out, *params, **{f"metric_{k}": v for k, v in metrics.items()})


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
