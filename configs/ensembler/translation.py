"""Diff-Ensembler demonstration: T1 -> FLAIR translation on the embedded data.

As `super_resolution.py`, with the L1 U-Net regressor as the baseline (job `ensembler_study`).

  python main.py --config=configs/ensembler/translation.py --workdir=runs/ens-t1
"""

from configs.ensembler import common


def get_config(variant=""):
  return common.study_config("t1_to_flair", variant, regressor=True)
