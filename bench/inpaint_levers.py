"""What each lever of the study moves: held-out learning curves of the axial slice model.

  python bench/inpaint_levers.py --workdir=runs/levers --levers=,volumes,context,prior,residual,healthy,best

For each variant of `configs/inpainting/study.py` ('' is the current recipe), trains the
study's axial model for `--steps` steps (evaluating every `--eval_every`) in
`<workdir>/<lever>` and prints its held-out `sample_mse_in_mask` (32 held-out slices that
meet the mask, sampled with 25 DDIM steps, error inside the mask on the [0, 1] scale; the
healthy part only for models that leave the tumour out), beside the error of the 3D
biharmonic fill on the same slices. A finished run is read, not trained again.
"""

import argparse
import json
import pathlib

import numpy as np

from configs.inpainting import study
from sciimg_jax.core import reports
from sciimg_jax.inpainting import slice_inputs


def prior_error(config, workdir):
  """The biharmonic fill's error on the slices of the evaluation (the same picks)."""
  c = study.get_config("prior").axial
  c.data.update(dict(cache_dir=config.data.cache_dir, loss_exclude=config.data.loss_exclude))
  inputs = slice_inputs.InpaintingSlices()
  batch = inputs.eval_batch(c, inputs.sources(c, workdir)["eval"])
  cond = batch["cond"]
  mask = cond[..., 1:2] * batch["scored"]
  err = ((slice_inputs.prior_of(c, cond) - batch["target"]) / 2.0) ** 2 * mask
  return float(err.sum() / mask.sum())


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--levers", default=",volumes,context,prior,residual,healthy,best")
  parser.add_argument("--steps", type=int, default=500)
  parser.add_argument("--eval_every", type=int, default=250)
  parser.add_argument("--cache_dir", default="", help="data.cache_dir (shared data)")
  args = parser.parse_args()
  root = pathlib.Path(args.workdir)
  curves = {}
  for lever in args.levers.split(","):
    c = study.get_config(lever).axial
    c.train.update(dict(num_steps=args.steps, eval_every=args.eval_every,
                        checkpoint_every=args.steps, progress_bar=False))
    c.data.cache_dir = args.cache_dir or str(root / "data")
    run = root / (lever or "recipe")
    if not reports.run_is_finished(run, args.steps):
      slice_inputs.train_slice_model(c, run)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    curves[lever or "recipe"] = {m["step"]: m["sample_mse_in_mask"] for m in lines
                                 if "sample_mse_in_mask" in m}
    curves[lever or "recipe"]["fill"] = prior_error(c, run)
  steps = sorted({s for curve in curves.values() for s in curve if s != "fill"})
  print(f"{'lever':<12}" + "".join(f"{'step ' + str(s):>12}" for s in steps)
        + f"{'biharmonic':>12}")
  for lever, curve in curves.items():
    print(f"{lever:<12}" + "".join(f"{curve.get(s, np.nan):>12.5f}" for s in steps)
          + f"{curve['fill']:>12.5f}")


if __name__ == "__main__":
  main()
