"""Scores inpainted volumes as the BraTS inpainting challenge does (`sciimg_jax/inpainting/scoring_job.py`).

  python main.py --config=configs/inpainting/evaluate.py --workdir=runs/eval \
      --config.evaluate.predictions=runs/infer/predictions \
      --config.evaluate.ground_truth=/data/BraTS-inpainting/val
"""

import ml_collections

from configs import base
from configs.inpainting import common


VARIANTS = {"tiny": {**common.TINY, "evaluate.progress_bar": False}}


def get_config(variant=""):
  c = common.get_base_config()
  c.job = "inpaint_evaluate"
  c.evaluate = ml_collections.ConfigDict()
  c.evaluate.predictions = ""          # folder of <case>-t1n-inference.nii.gz (flat or per case)
  c.evaluate.prediction_key = "t1n-inference"  # or t1n-sample: sample 0 of a mean-of-N run
  c.evaluate.ground_truth = ""         # BraTS-layout folder with -t1n, -t1n-voided, -mask-healthy
  c.evaluate.dilation = 2              # voxels the healthy mask grows by for `discontinuity`
  c.evaluate.timings = "timings.json"  # {case: seconds} in the predictions folder, if present
  # N >= 2: the predictions are means of N samples; score their spread (std file) too
  c.evaluate.num_samples = 0
  c.evaluate.progress_bar = True
  return base.apply_variant(c, variant, VARIANTS)
