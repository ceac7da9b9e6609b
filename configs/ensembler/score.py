"""Scores NIfTI outputs against BraTS-layout ground truth in file space (job `ensembler_score`,
`sciimg_jax/ensembler/scoring_job.py`).

  python main.py --config=configs/ensembler/score.py --workdir=runs/sr/score \
      --config.evaluate.predictions=runs/sr/eval/outputs \
      --config.evaluate.methods='("cubic","average","fused")' \
      --config.evaluate.ground_truth=/data/held-out

Another tool's outputs: `--config.evaluate.predictions=TOOL_OUT` (its `<case>/<case>-t2f.nii.gz`
or `<case>-t2f.nii.gz` files) and no `methods`. The target is `data.target` (t2f).
"""

import ml_collections

from configs import base
from configs.ensembler import common


def get_config(variant=""):
  c = common.get_base_config(common.task_of(variant))
  c.job = "ensembler_score"
  c.evaluate = ml_collections.ConfigDict(dict(
      predictions="",    # folder of <case>/<case>-<target>.nii.gz or <case>-<target>.nii.gz
      methods=(),        # its subfolders to score, a row each; () = the folder itself
      ground_truth="",   # BraTS-layout folder with <case>/<case>-<data.target>.nii.gz
      progress_bar=True,
  ))
  variants = common.variants()
  variants["tiny"] = {**variants["tiny"], "evaluate.progress_bar": False}
  return base.apply_variant(c, variant, variants)
