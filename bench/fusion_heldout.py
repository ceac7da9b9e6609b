"""Held-out errors of a trained Diff-Ensembler fusion against the average, on crops and whole volumes.

  python bench/fusion_heldout.py --fusion=runs/ens_sr/fusion --crops=24x24x24,whole

The fusion's own evaluation (`fusion_task.FusionTask.evaluate`: the epsilon and clipped-x0
MSE of the fused denoiser and of the plain average, one held-out example at each timestep
the sampler visits) run with the trained parameters of `--fusion` on examples of each size
of `--crops` ('whole' = the whole `data.volume_shape` volume). A fusion trained on crops
whose GroupNorm statistics do not carry over to whole volumes shows a fused-minus-average
gap that changes sign or grows on 'whole'.
"""

import argparse
import json
import pathlib

import jax
import ml_collections

from sciimg_jax.core import trained_models
from sciimg_jax.ensembler import fusion_task


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fusion", required=True, help="a fusion training workdir")
  parser.add_argument("--crops", default="24x24x24,whole", help="comma-separated sizes")
  parser.add_argument("--splits", default="eval", help="eval, train or both (comma-separated): "
                      "training subjects show how far the members' errors there (which the "
                      "fusion learns from) differ from held-out ones")
  args = parser.parse_args()
  stored = json.loads((pathlib.Path(args.fusion) / "config.json").read_text())
  print(f"fusion {args.fusion}")
  print("| subjects | examples | eps MSE fused | eps MSE average | x0 MSE fused | x0 MSE average |")
  print("| --- | --- | --- | --- | --- | --- |")
  for split, crop in ((s, c) for s in args.splits.split(",") for c in args.crops.split(",")):
    config = ml_collections.ConfigDict(stored)
    config.fusion.crop_size = () if crop == "whole" else tuple(int(n) for n in crop.split("x"))
    task = fusion_task.FusionTask(config, pathlib.Path(args.fusion))
    task.sources["eval"] = task.sources[split]
    trained = trained_models.load(args.fusion, task.mesh,
                                  create=lambda c, rngs, dtype: task.create_model(rngs, dtype))
    frozen = task.frozen_params(task.mesh)
    m = task.evaluate(trained.net, trained.params, frozen, 0, jax.random.key(0), args.fusion)
    print(f"| {split} | {crop} | {m['eval_eps_mse_fused']:.4g} | {m['eval_eps_mse_average']:.4g} | "
          f"{m['eval_x0_mse_fused']:.4g} | {m['eval_x0_mse_average']:.4g} |")


if __name__ == "__main__":
  main()
