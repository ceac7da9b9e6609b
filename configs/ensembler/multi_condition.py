"""Diff-Ensembler demonstration: multi-condition translation (T1, T2) -> FLAIR.

As `translation.py`, with both contrasts as conditions of every 2D model (job
`ensembler_study`).

  python main.py --config=configs/ensembler/multi_condition.py --workdir=runs/ens-t1t2
"""

from configs.ensembler import common


def get_config(variant=""):
  return common.study_config("t1t2_to_flair", variant, regressor=True)
