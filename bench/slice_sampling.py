"""Sampling settings of a trained slice model: steps, stepper and x0 clipping, one change at a time.

  python bench/slice_sampling.py --workdir=runs/inpaint_study/axial --name=axial

Inpaints the same held-out slices that meet their subject's mask (the training evaluation's
batch and sampler: known-region replacement at every step, EMA parameters of the latest
checkpoint) with each setting, and prints the error inside the (healthy part of the) mask
on the [0, 1] scale: of one sample, averaged over `--samples` samples, and of their mean
(the posterior mean the BraTS scores reward); the in-plane texture ratio (mean gradient
magnitude in the mask against the truth's) of sample 0 and of the mean; seconds per batch.
The same keys serve every setting.
"""

import argparse
import time

from sciimg_jax.core import xla_flags

xla_flags.set_cpu_flags()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from sciimg_jax.core import sharding  # noqa: E402
from sciimg_jax.core import slice_task  # noqa: E402
from sciimg_jax.inpainting import slice_inputs  # noqa: E402
from sciimg_jax.inpainting import volume_inpainter  # noqa: E402

# name: `sampling` keys changed from the model's own training config.
SETTINGS = {
    "ddim 25": {"steps": 25},
    "ddim 25 eta 1": {"steps": 25, "eta": 1.0},
    "karras 25": {"steps": 25, "spacing": "karras"},
    "karras 25 eta 1": {"steps": 25, "spacing": "karras", "eta": 1.0},
    "karras 10": {"steps": 10, "spacing": "karras"},
    "ddim 5": {"steps": 5},
    "ddim 10": {"steps": 10},
    "ddim 50": {"steps": 50},
    "ddim 100": {"steps": 100},
    "ddim 10 no-clip": {"steps": 10, "clip_x0": 0.0},
    "ddim 25 no-clip": {"steps": 25, "clip_x0": 0.0},
    "ddpm 10": {"steps": 10, "stepper": "ddpm"},
    "ddpm 25": {"steps": 25, "stepper": "ddpm"},
    "dpm++2m 5": {"steps": 5, "stepper": "dpm++2m"},
    "dpm++2m 10": {"steps": 10, "stepper": "dpm++2m"},
    "dpm++2m 25": {"steps": 25, "stepper": "dpm++2m"},
}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a slice model's training folder")
  parser.add_argument("--name", default="axial", choices=["axial", "coronal"])
  parser.add_argument("--num_slices", type=int, default=32)
  parser.add_argument("--samples", type=int, default=4)
  parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names")
  args = parser.parse_args()
  mesh = sharding.make_mesh()
  model = volume_inpainter.load_slice_model(args.workdir, args.name, mesh)
  c = model.config.copy_and_resolve_references()
  c.train.num_sample_images = args.num_slices
  inputs = slice_inputs.InpaintingSlices()  # TFDS slices or slices of volumes, as trained
  batch = inputs.eval_batch(c, inputs.sources(c, args.workdir)["eval"])
  _, mask = slice_inputs.known_and_mask(c.data.conditions, batch["cond"])
  mask = mask * batch.get("scored", 1.0)  # the healthy part of the mask
  target = slice_inputs.to_image(c, batch["target"], batch["cond"])

  def error(result):
    return float((((result - target) / 2.0) ** 2 * mask).sum() / mask.sum())

  def texture(result):  # in-mask mean gradient magnitude against the truth's
    grad = lambda v: np.sqrt(sum(g**2 for g in np.gradient(np.asarray(v, np.float64)[..., 0],
                                                            axis=(1, 2))))
    region = mask[..., 0] > 0
    return float(grad(result)[region].mean() / grad(target)[region].mean())

  print(f"{args.workdir} ({c.diffusion.parameterization}, trained {c.train.num_steps} steps): "
        f"in-mask error on {args.num_slices} held-out slices")
  print(f"{'setting':<20}{'1 sample':>10}{f'mean of {args.samples}':>12}{'texture 1':>10}"
        f"{'texture mean':>13}{'s/batch':>9}")
  for name in args.settings.split(","):
    setting = c.copy_and_resolve_references()
    setting.sampling.update(SETTINGS[name])
    inpaint = slice_task.make_predictor(setting, model.trained.net, mesh,
                                        slice_inputs.InpaintingSlices())
    sharded = sharding.shard_batch(batch, mesh)["cond"]
    jax.block_until_ready(inpaint(model.params, sharded, jax.random.key(0)))  # compile
    start = time.time()
    results = [np.asarray(inpaint(model.params, sharded, jax.random.key(k)))
               for k in range(args.samples)]
    seconds = (time.time() - start) / args.samples
    one = np.mean([error(r) for r in results])
    mean = np.mean(results, axis=0)
    print(f"{name:<20}{one:>10.4f}{error(mean):>12.4f}{texture(results[0]):>10.2f}"
          f"{texture(mean):>13.2f}{seconds:>9.2f}", flush=True)


if __name__ == "__main__":
  main()
