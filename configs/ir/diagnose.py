"""Collapse diagnostics of trained classifiers from their checkpoints (sciimg_jax/ir/diagnose_job.py).

  python main.py --config=configs/ir/diagnose.py --workdir=runs/diagnose \
      --config.runs='("runs/ir","runs/rgb")'
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.job = "ir_diagnose"
  c.runs = ("runs/ir", "runs/rgb")   # classifier training folders, shown side by side
  return c
