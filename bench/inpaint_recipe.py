"""Training-recipe study for the inpainting slice models: learning curves, one change at a time.

Trains the quickstart's axial slice model (configs/quickstart.py) once per variant on the
same embedded subjects and prints the held-out error inside the mask of the sampled slices
(`sample_mse_in_mask`, on the [0, 1] scale, 25 DDIM steps, EMA parameters) at every
evaluation: the learning curves the trainer also logs to metrics.jsonl and TensorBoard.

  python bench/inpaint_recipe.py --workdir=runs/recipe --steps=400 \
      --variants=baseline,random_masks,random_masks+weight

A variant is a '+'-joined list of the names in CHANGES; 'baseline' is the quickstart's
axial model as it is (its recipe changes as findings land: x0 since the parameterisation
study, so that study's eps row is the variant 'eps').
"""

import argparse
import json
import pathlib
import time

import numpy as np

from sciimg_jax.core import xla_flags

xla_flags.set_cpu_flags()

from configs import base  # noqa: E402
from configs import quickstart  # noqa: E402
from data_pipelines import input_pipeline  # noqa: E402
from data_pipelines import sources as data_sources  # noqa: E402
from skimage.restoration import inpaint_biharmonic  # noqa: E402
from sciimg_jax.inpainting import slice_inputs  # noqa: E402

# Each change is a dict of dotted config keys of a slice-model training config.
CHANGES = {
    "baseline": {},
    "random_masks": {"data.slices": "brain", "data.random_masks.probability": 0.8},
    "weight": {"train.loss_weight_in_mask": 5.0},
    "weight20": {"train.loss_weight_in_mask": 20.0},
    "eps": {"diffusion.parameterization": "eps"},
    "x0": {"diffusion.parameterization": "x0"},
    "subjects96": {"data.synthetic.num_train": 96},
    "v": {"diffusion.parameterization": "v"},
    "wide": {"model.channels": (32, 64, 128), "model.num_head_channels": 32},
    "deep": {"model.num_res_blocks": 2},
    "lr3e-4": {"optim.learning_rate": 3e-4},
    "lr3e-3": {"optim.learning_rate": 3e-3},
    "ema999": {"optim.ema_decay": 0.999},
    "no_ema": {"optim.ema_decay": 0.0},
    "batch16": {"data.batch_size": 16},
}


def variant_config(variant, steps, cache_dir, num_images):
  c = quickstart.slice_model("axial")
  for name in variant.split("+"):
    base.set_keys(c, CHANGES[name])
  c.data.cache_dir = str(cache_dir)
  c.sampling.steps = 25  # the evaluation sampler of the curves in docs/inpainting.md
  c.train.num_steps = steps
  c.train.eval_every = max(steps // 4, 1)
  c.train.checkpoint_every = steps
  c.train.num_sample_images = num_images
  c.train.progress_bar = False
  return c


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="runs/recipe")
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--variants", default="baseline,random_masks,random_masks+weight")
  parser.add_argument("--num_images", type=int, default=16)
  args = parser.parse_args()
  workdir = pathlib.Path(args.workdir)
  curves = {}
  for variant in args.variants.split(","):
    c = variant_config(variant, args.steps, workdir / "cache", args.num_images)
    run = workdir / f"{variant}-{args.steps}"
    start = time.time()
    slice_inputs.train_slice_model(c, run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    curves[variant] = {r["step"]: r["sample_mse_in_mask"] for r in rows
                       if "sample_mse_in_mask" in r}
    print(f"{variant}: {time.time() - start:.0f} s, curve {curves[variant]}", flush=True)
  steps = sorted({s for curve in curves.values() for s in curve})
  print(f"\nsample_mse_in_mask ({args.num_images} held-out slices) by training step")
  print(f"{'variant':<28}" + "".join(f"{s:>9}" for s in steps))
  for variant, curve in curves.items():
    print(f"{variant:<28}" + "".join(f"{curve.get(s, float('nan')):>9.4f}" for s in steps))
  print(f"{'2D biharmonic, same slices':<28}{biharmonic_reference(c):>9.4f}")


def biharmonic_reference(config):
  """The same error for `skimage.restoration.inpaint_biharmonic` on the same held-out slices."""
  splits = data_sources.source_dirs(config.data, config.data.cache_dir)
  source = input_pipeline.slice_sources(config.data, splits, config.data.cache_dir)["eval"]
  batch = input_pipeline.make_batch(config.data, source, slice_inputs.sample_indices(config, source))
  voided, mask = slice_inputs.known_and_mask(config.data.conditions, batch["cond"])
  err = total = 0.0
  for v, m, t in zip(voided[..., 0], mask[..., 0], batch["target"][..., 0]):
    fill = inpaint_biharmonic(np.where(m > 0, 0.0, v), m > 0)
    err += float((((fill - t) / 2.0) ** 2 * m).sum())
    total += float(m.sum())
  return err / max(total, 1.0)


if __name__ == "__main__":
  main()
