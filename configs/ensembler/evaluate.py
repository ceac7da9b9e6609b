"""Super-resolve or translate a folder of volumes with every method (job `ensembler_evaluate`).

Methods (`evaluate.methods`): each 2D model alone (its axis), `tpdm`, `average`, `fused`,
and the baselines `cubic` (super-resolution) and `regressor` (a trained L1 U-Net).

  python main.py --config=configs/ensembler/evaluate.py:sr --workdir=runs/sr/eval \
      --config.evaluate.members='("runs/sr/axial","runs/sr/coronal","runs/sr/sagittal")' \
      --config.evaluate.fusion=runs/sr/fusion --config.evaluate.input_root=/data/held-out
"""

from configs import base
from configs.ensembler import common


def get_config(variant=""):
  c = common.get_base_config(common.task_of(variant))
  c.job = "ensembler_evaluate"
  c.evaluate = common.evaluate_block()
  return base.apply_variant(c, variant, common.variants())
