"""The inpainting study (job `inpaint_study`): the quickstart's steps at the study's size.

96 training subjects (an x0 model over-fits 24 within 1000 steps), 1000 training steps per
slice model, 8 held-out subjects, every method as one sample and as the mean of 4 (the
paper's comparisons first), 25 sampling steps; the table of docs/inpainting.md.

  python main.py --config=configs/inpainting/study.py --workdir=runs/inpaint_study
"""

from configs import base
from configs import quickstart

SLICE_MODEL = {"data.synthetic.num_train": 96, "train.num_steps": 1000,
               "optim.warmup_steps": 100, "train.eval_every": 250,
               "train.checkpoint_every": 500, "train.num_sample_images": 32,
               "data.synthetic.num_eval": 8,
               "sampling.steps": 25}  # the evaluation sampler of the learning curves
COMPARE = ("biharmonic/none", "harmonic/none", "biharmonic2d/none", "axial/none/mean4",
           "hierarchical/fixed/mean4", "hierarchical/adaptive/mean4", "hierarchical/none/mean4",
           "coronal/none/mean4", "tpdm/none/mean4", "average/none/mean4")
STUDY = {
    **{f"{name}.{k}": v for name in ("axial", "coronal") for k, v in SLICE_MODEL.items()},
    "compare": COMPARE,
    "sampling.steps": 25,
}


def get_config(variant=""):
  """The study; `tiny` shrinks it to the quickstart's test size."""
  c = base.set_keys(quickstart.get_config(), STUDY)
  c.job = "inpaint_study"
  return base.apply_variant(c, variant, quickstart.VARIANTS)
