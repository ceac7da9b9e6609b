"""Super-resolve or translate a folder of volumes with every method (job `ensembler_translate`).

Methods (`translate.methods`): each 2D model alone (its axis), `tpdm`, `average`, `fused`,
and the baselines `cubic` (super-resolution) and `regressor` (a trained L1 U-Net).

  python main.py --config=configs/ensembler/translate.py:sr --workdir=runs/sr/eval \
      --config.translate.members='("runs/sr/axial","runs/sr/coronal","runs/sr/sagittal")' \
      --config.translate.fusion=runs/sr/fusion --config.translate.input_root=/data/held-out
"""

import ml_collections

from configs import base
from configs.ensembler import common


def translate_block():
  return ml_collections.ConfigDict(dict(
      members=(),          # workdirs of the trained 2D models
      fusion="",           # workdir of the trained fusion ('' = no 'fused' method)
      regressor="",        # workdir of a trained L1 regressor ('' = none)
      segmenter="",        # workdir of the downstream segmenter ('' = no Dice column)
      methods=("cubic", "axial", "coronal", "sagittal", "tpdm", "average", "fused"),
      input_root="",       # BraTS-layout folder; '' = the held-out split of `data`
      num_cases=0,         # 0 = every case
      progress_bar=True,
  ))


def get_config(variant=""):
  c = common.get_base_config(common.task_of(variant))
  c.job = "ensembler_translate"
  c.translate = translate_block()
  return base.apply_variant(c, variant, common.variants())
