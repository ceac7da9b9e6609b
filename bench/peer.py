"""Runs a peer benchmark (a script for another Python, e.g. one with torch and MONAI)."""

import inspect
import json
import subprocess
import time


def time_steps(step, warmup, steps):
  # Seconds of each of `steps` calls of `step()`, after `warmup` untimed ones.
  for _ in range(warmup):
    step()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
  return times


# Prepended to a peer script: the same timing loop, so both sides time alike.
TIMING = "\nimport time\n\n\n" + inspect.getsource(time_steps)


def run(python, script, config):
  """Runs `script` with `python`, the config as its JSON argument; its last stdout line as JSON.

  Returns None (and says why) if that Python cannot run it, e.g. torch is not installed.
  """
  try:
    out = subprocess.run([python, "-c", script, json.dumps(config)], check=True,
                         capture_output=True, text=True)
  except (subprocess.CalledProcessError, OSError) as e:
    err = getattr(e, "stderr", "") or str(e)
    print(f"peer: could not run with {python}: {err.strip().splitlines()[-1:]}")
    return None
  return json.loads(out.stdout.strip().splitlines()[-1])
