"""Coronal 2D inpainting model: stage 2 (refinement) of the hierarchical pipeline.

The axial model's recipe (configs/inpaint_axial.py) on coronal slices; for BraTS
volumes (240x240x155) a coronal slice is 240x155, padded to 256x160.

  python main.py --config=configs/inpaint_coronal.py --workdir=runs/coronal \
      --config.data.root=/data/BraTS-inpainting
  python main.py --config=configs/inpaint_coronal.py:tiny --workdir=/tmp/coronal   # seconds, CPU
"""

from configs import base
from configs import inpaint_axial


def get_config(variant=""):
  c = inpaint_axial.get_config()
  c.data.axis = "coronal"
  c.data.image_size = (256, 160)
  return base.apply_variant(c, variant)
