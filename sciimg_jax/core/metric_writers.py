"""Metrics to TensorBoard event files (tensorboardX, no TensorFlow) and to a JSONL file."""

import json
import pathlib

import numpy as np
from tensorboardX import SummaryWriter


class MetricWriter:
  """Writes scalars to `workdir/tensorboard` and appends them to `workdir/metrics.jsonl`."""

  def __init__(self, workdir, enabled=True):
    self.enabled = enabled
    if not enabled:
      return
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self._tb = SummaryWriter(str(workdir / "tensorboard"))
    self._jsonl = open(workdir / "metrics.jsonl", "a")

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
