"""Quickstart: the whole inpainting method on the embedded data, minutes on a laptop CPU.

Generates MNI152-derived subjects at 4 mm (train and held-out disjoint), trains a
small axial and a small coronal (x_t, voided, mask) -> x0 U-Net, inpaints the
held-out subjects with the hierarchical sampler (fixed resampling, one sample; the
tiny variant of the tests draws 2 and scores their mean and sample 0), with the
axial-only baseline and with the classical biharmonic and harmonic fills, scores them
with the BraTS metrics and prints the comparison (also in `comparison.json`). Each
training run writes checkpoints, metrics (JSONL + TensorBoard: the loss and the
held-out learning curve `sample_mse_in_mask`) and a PNG of inpainted held-out slices
into its folder.

  python main.py --config=configs/quickstart.py --workdir=runs/quickstart
  python main.py --config=configs/inpainting/study.py --workdir=runs/inpaint_study  # the study
"""

import ml_collections

from configs import base
from configs.inpainting import common
from configs.inpainting import evaluate as inpaint_evaluate
from configs.inpainting import inpaint


def slice_model(axis):
  c = common.get_base_config()
  c.job = "inpaint_train"
  c.data.synthetic.update(dict(num_train=24, num_eval=4, resolution_mm=4))
  c.data.axis = axis
  c.data.image_size = (64, 64)   # a 4 mm volume is 50x59x48: every slice fits
  c.data.batch_size = 8
  # The training recipe (docs/inpainting.md, "Training recipe"): every brain slice, most with a random
  # lesion-shaped hole, and the unknown pixels weighted 5x in the loss.
  c.data.slices = "brain"
  c.data.random_masks.probability = 0.8
  c.train.loss_weight_in_mask = 5.0
  # The levers that beat the biharmonic fill (docs/inpainting.md, "Levers"): slices of whole
  # volumes with 3D holes, 2 slices of context on each side, the biharmonic fill as a
  # channel and the residual target from it, the tumour left out of the loss.
  c.data.source = "volumes"
  c.data.context = 2
  c.data.prior = "biharmonic"
  c.data.residual = True
  c.data.loss_exclude = "mask-unhealthy"
  # x0 parameterisation: the held-out in-mask error after 200 steps is 0.017 against eps's
  # 0.053 (0.031 at 400 steps).
  c.diffusion.parameterization = "x0"
  c.model.channels = (16, 32, 64)
  c.model.num_res_blocks = 1
  c.model.attention_levels = (False, False, True)
  c.model.num_head_channels = 16
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 50
  c.optim.ema_decay = 0.99
  # 10 DDIM steps: an x0 model's samples are as good as with 25 or 100
  # (docs/inpainting.md, "Sampling settings"), at 2.5x less time.
  c.sampling.steps = 10
  # 250 steps: the x0 model's held-out in-mask error is lowest there, and rises after it
  # (over-fitting 24 subjects; docs/inpainting.md, "Training recipe").
  c.train.num_steps = 250
  c.train.log_every = 25
  c.train.checkpoint_every = 250
  c.train.eval_every = 250
  c.train.num_sample_images = 4
  return c


# The tiny slice models: 64 px so that whole 4 mm volumes fit; attention at 16x16, not
# 32x32 (256 tokens a slice instead of 1024: 16x less work).
TINY_SLICE_MODEL = {**common.TINY, "data.image_size": (64, 64), "model.channels": (8, 16, 16),
                    "model.attention_levels": (False, False, True), "train.eval_every": 0}


VARIANTS = {"tiny": {
    **{f"{name}.{k}": v for name in ("axial", "coronal") for k, v in TINY_SLICE_MODEL.items()},
    # axial-only sampling is tested in test_volume_inpainter
    "compare": ("hierarchical/fixed/mean2", "biharmonic/none", "harmonic/none"),
    "compare_families": ("box",),
    "sampling.steps": 4, "sampling.chunk_size": 8,
    "pipeline.resampling.max_loops": 1,
    "inpaint.progress_bar": False, "evaluate.progress_bar": False,
}}


def get_config(variant=""):
  c = ml_collections.ConfigDict()
  c.job = "quickstart"
  c.seed = 0
  c.axial = slice_model("axial")
  c.coronal = slice_model("coronal")
  # Methods to compare, "method/resampling[/meanN]" (see sciimg_jax/inpainting/quickstart.py):
  # the hierarchical sampler as the mean of 4 samples (the BraTS scores) and sample 0 alone
  # (texture and seams of one sample), with the samples' spread; no RePaint loops (they
  # did not pay for their time, docs/inpainting.md).
  c.compare = ("hierarchical/none/mean4", "axial/none", "biharmonic/none", "harmonic/none")
  # The comparison again on the held-out cases with new healthy masks of these shape
  # families (data_pipelines/mask_families.py), e.g. ('box',): shapes never trained on.
  c.compare_families = ()
  c.inpaint = inpaint.get_config().inpaint
  c.pipeline = inpaint.get_pipeline_config()
  c.pipeline.resampling.max_loops = 2
  c.sampling = inpaint.get_sampling_config()
  c.sampling.steps = 10   # as good as 25 with the x0 models (as above)
  # Slices per network call (all samples together): on CPU, per-slice cost of these networks
  # grows past ~16 (bench/inpaint_methods.py); on a GPU raise it.
  c.sampling.chunk_size = 16
  c.evaluate = inpaint_evaluate.get_config().evaluate
  return base.apply_variant(c, variant, VARIANTS)
