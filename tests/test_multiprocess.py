"""2 processes x 2 CPU devices (gloo collectives) against 1 process x 4 devices: the trainer's
step gives the same losses, gradient norms and parameters."""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np

import multiprocess_reference as ref
from tolerances import float32_tolerance

HERE = pathlib.Path(__file__).resolve().parent


def test_two_processes_match_one(tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  out = tmp_path / "two.npz"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen([sys.executable, str(HERE / "multiprocess_worker.py"),
                             f"127.0.0.1:{port}", "2", str(i), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  logs = [p.communicate(timeout=600)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), "\n".join(l[-3000:] for l in logs)
  two = np.load(out)
  assert jax.device_count() == 4
  params, metrics = ref.run_steps(jax.devices())
  # Each gradient entry sums 8 examples' terms (fan-in 16 + 8 in the MLP's backward); the two
  # runs add them in other groupings (per device, then across devices and processes).
  ops = 2 * (8 + 16 + 8)
  np.testing.assert_allclose(two["metric_loss"], metrics["loss"],
                             rtol=float32_tolerance(1.0, ops))
  np.testing.assert_allclose(two["metric_grad_norm"], metrics["grad_norm"],
                             rtol=float32_tolerance(1.0, ops))
  for i, p in enumerate(params):
    magnitude = max(1.0, float(np.abs(p).max()))
    np.testing.assert_allclose(two[f"arr_{i}"], np.asarray(p), rtol=0,
                               atol=3 * float32_tolerance(magnitude, ops))
