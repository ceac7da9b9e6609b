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
from configs import inpaint
from configs import inpaint_evaluate


def slice_model(axis):
  c = base.get_base_config()
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
  c.train.sample_every = 400
  c.train.num_sample_images = 4
  return c


def get_config(variant=""):
  c = ml_collections.ConfigDict()
  c.job = "quickstart"
  c.seed = 0
  c.axial = slice_model("axial")
  c.coronal = slice_model("coronal")
  # Methods to compare, "method/resampling" (see sciimg_jax/pipeline.py).
  c.compare = ("hierarchical/fixed", "hierarchical/adaptive", "axial/none")
  c.inpaint = inpaint.get_config().inpaint
  c.pipeline = inpaint.get_pipeline_config()
  c.pipeline.stage1.steps = 25
  c.pipeline.stage2.steps = 25
  c.pipeline.resampling.max_loops = 2
  c.evaluate = inpaint_evaluate.get_config().evaluate
  if variant == "tiny":
    for name in ("axial", "coronal"):
      base.tiny(c[name])
      c[name].data.image_size = (64, 64)
      # Attention at 16x16, not 32x32: 256 tokens a slice instead of 1024 (16x less work).
      c[name].model.update(dict(channels=(8, 16, 16), attention_levels=(False, False, True)))
      c[name].train.sample_every = 0
    c.pipeline.stage1.steps = c.pipeline.stage2.steps = 4
    c.pipeline.chunk_size = 8
    c.inpaint.progress_bar = c.evaluate.progress_bar = False
  elif variant:
    raise ValueError(f"unknown config variant {variant!r}; known: tiny")
  return c
