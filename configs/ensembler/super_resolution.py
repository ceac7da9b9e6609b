"""Diff-Ensembler demonstration: 4x super-resolution of FLAIR on the embedded data.

Trains axial, coronal and sagittal 2D models on (FLAIR average-pooled by 4 and repeated
back) -> FLAIR with residual targets, the 3D fusion over them and the downstream
segmenter, then scores cubic upsampling, each direction, TPDM, average and fused on the
8 held-out subjects (job `ensembler_study`).

  python main.py --config=configs/ensembler/super_resolution.py --workdir=runs/ens-sr
  python main.py --config=configs/ensembler/super_resolution.py:tiny --workdir=/tmp/sr
"""

from configs.ensembler import common


def get_config(variant=""):
  return common.study_config("sr", variant, regressor=False)
