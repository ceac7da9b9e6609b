"""Quickstart: the whole inpainting method on the embedded data, minutes on a laptop CPU.

Generates MNI152-derived subjects at 4 mm (train and held-out disjoint), trains a
small axial and a small coronal (x_t, voided, mask) -> epsilon U-Net, inpaints the
held-out subjects with the hierarchical sampler (fixed and adaptive resampling)
and with the axial-only baseline,
scores both with the BraTS metrics and prints the comparison (also in
`comparison.json`). Each training run writes checkpoints, metrics (JSONL +
TensorBoard) and a PNG of inpainted held-out slices into its folder.

  python main.py --config=configs/quickstart.py --workdir=runs/quickstart
"""

import ml_collections

from configs import base
from configs.inpainting import evaluate as inpaint_evaluate
from configs.inpainting import inpaint


def slice_model(axis):
  c = base.get_base_config()
  c.job = "inpaint_train"
  c.data.synthetic.update(dict(num_train=24, num_eval=4, resolution_mm=4))
  c.data.axis = axis
  c.data.slices = "mask"
  c.data.image_size = (64, 64)   # a 4 mm volume is 50x59x48: every slice fits
  c.data.batch_size = 8
  c.model.channels = (16, 32, 64)
  c.model.num_res_blocks = 1
  c.model.attention_levels = (False, False, True)
  c.model.num_head_channels = 16
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 50
  c.optim.ema_decay = 0.99
  c.diffusion.sample_steps = 25
  c.train.num_steps = 400
  c.train.log_every = 25
  c.train.checkpoint_every = 200
  c.train.eval_every = 400
  c.train.num_sample_images = 4
  return c


# The tiny slice models: 64 px so that whole 4 mm volumes fit; attention at 16x16, not
# 32x32 (256 tokens a slice instead of 1024: 16x less work).
TINY_SLICE_MODEL = {**base.TINY, "data.image_size": (64, 64), "model.channels": (8, 16, 16),
                    "model.attention_levels": (False, False, True), "train.eval_every": 0}


VARIANTS = {"tiny": {
    **{f"{name}.{k}": v for name in ("axial", "coronal") for k, v in TINY_SLICE_MODEL.items()},
    "pipeline.stage1.steps": 4, "pipeline.stage2.steps": 4, "pipeline.chunk_size": 8,
    "inpaint.progress_bar": False, "evaluate.progress_bar": False,
}}


def get_config(variant=""):
  c = ml_collections.ConfigDict()
  c.job = "quickstart"
  c.seed = 0
  c.axial = slice_model("axial")
  c.coronal = slice_model("coronal")
  # Methods to compare, "method/resampling" (see sciimg_jax/inpainting/volume_sampler.py).
  c.compare = ("hierarchical/fixed", "hierarchical/adaptive", "axial/none",
               "biharmonic/none", "harmonic/none")
  c.inpaint = inpaint.get_config().inpaint
  c.pipeline = inpaint.get_pipeline_config()
  c.pipeline.stage1.steps = 25
  c.pipeline.stage2.steps = 25
  c.pipeline.resampling.max_loops = 2
  c.evaluate = inpaint_evaluate.get_config().evaluate
  return base.apply_variant(c, variant, VARIANTS)
