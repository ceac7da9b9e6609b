"""Axial 2D inpainting model: stage 1 (coarse) of the hierarchical sampler.

Network input (x_t, voided slice, mask slice) -> epsilon, as in the BraTS 2023
2nd-place DDPM; linear schedule, T = 1000; trained on axial slices that intersect
the mask (`sciimg_jax/inpainting/slice_inputs.py`). Defaults suit real BraTS volumes
(240x240x155, slices padded to 256x256).

  python main.py --config=configs/inpainting/axial.py --workdir=runs/axial \
      --config.data.root=/data/BraTS-inpainting
  python main.py --config=configs/inpainting/axial.py:tiny --workdir=/tmp/axial   # seconds, CPU
"""

from configs import base
from configs.inpainting import common

VARIANTS = {"tiny": common.TINY}


def get_config(variant=""):
  c = common.get_base_config()
  c.job = "inpaint_train"
  c.data.axis = "axial"
  c.data.slices = "mask"
  c.data.image_size = (256, 256)
  c.data.synthetic.resolution_mm = 1
  c.model.channels = (64, 128, 256, 256)
  c.model.attention_levels = (False, False, False, True)
  return base.apply_variant(c, variant, VARIANTS)
