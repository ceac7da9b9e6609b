"""Coronal 2D inpainting model: stage 2 (refinement) of the hierarchical sampler.

The axial model's recipe (configs/inpainting/axial.py) on coronal slices; for BraTS
volumes (240x240x155) a coronal slice is 240x155, padded to 256x160.

  python main.py --config=configs/inpainting/coronal.py --workdir=runs/coronal \
      --config.data.root=/data/BraTS-inpainting
  python main.py --config=configs/inpainting/coronal.py:tiny --workdir=/tmp/coronal   # seconds, CPU
"""

from configs import base
from configs.inpainting import axial

VARIANTS = axial.VARIANTS


def get_config(variant=""):
  c = axial.get_config()
  c.data.axis = "coronal"
  c.data.image_size = (256, 160)
  return base.apply_variant(c, variant, VARIANTS)
