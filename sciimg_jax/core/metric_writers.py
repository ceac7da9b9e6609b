"""Metrics to TensorBoard event files (tensorboardX, no TensorFlow) and to a JSONL file."""

import json
import pathlib

import numpy as np
from tensorboardX import SummaryWriter

from sciimg_jax.core import atomic_files


def _row_step(line):
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None  # a torn last line of a killed run


class MetricWriter:
  """Writes scalars to `workdir/tensorboard` and appends them to `workdir/metrics.jsonl`.

  `resume_step`: a run starting at that step (0 when fresh, else its checkpoint's step)
  first drops the rows of later steps that an interrupted run left, so readers see one
  row per step.
  """

  def __init__(self, workdir, enabled=True, resume_step=None):
    self.enabled = enabled
    if not enabled:
      return
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "metrics.jsonl"
    if resume_step is not None and path.exists():
      steps = [(_row_step(l), l) for l in path.read_text().splitlines()]
      rows = [l for s, l in steps if s is not None and s <= resume_step]
      atomic_files.write_text(path, "".join(r + "\n" for r in rows))
    self._tb = SummaryWriter(str(workdir / "tensorboard"), purge_step=(
        None if resume_step is None else resume_step + 1))
    self._jsonl = open(path, "a")

  def write_scalars(self, step, scalars):
    if not self.enabled:
      return
    scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)
    self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
    self._jsonl.flush()

  def write_text(self, tag, text, step=0):
    if self.enabled:
      self._tb.add_text(tag, text, step)

  def close(self):
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
