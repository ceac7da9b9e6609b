"""Collapse diagnostics of trained classifiers from their checkpoints.

The job `ir_diagnose` (sciimg_jax/ir/diagnose_job.py); it has no variants.

  python main.py --config=configs/ir/diagnose.py --workdir=runs/diagnose \
      --config.runs='("runs/ir","runs/rgb")'
"""

import ml_collections


def get_config(variant=""):
  if variant:
    raise ValueError(f"unknown config variant {variant!r}; configs/ir/diagnose.py has none")
  c = ml_collections.ConfigDict()
  c.job = "ir_diagnose"
  c.runs = ("runs/ir", "runs/rgb")   # classifier training folders, shown side by side
  return c
