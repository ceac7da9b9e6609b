"""Sampling settings of a trained slice model: steps, stepper and x0 clipping, one change at a time.

  python bench/slice_sampling.py --workdir=runs/inpaint_study/axial --name=axial

Inpaints the same held-out slices that meet their subject's mask (the training evaluation's
sampler: known-region replacement at every step, EMA parameters of the latest checkpoint)
with each setting, and prints the error inside the mask on the [0, 1] scale: of one sample,
averaged over `--samples` samples, and of their mean (the posterior mean the BraTS scores
reward), with seconds per batch. The same keys serve every setting.
"""

import argparse
import time

from sciimg_jax.core import xla_flags

xla_flags.set_cpu_flags()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from data_pipelines import input_pipeline  # noqa: E402
from data_pipelines import sources as data_sources  # noqa: E402
from sciimg_jax.core import sharding  # noqa: E402
from sciimg_jax.core import slice_task  # noqa: E402
from sciimg_jax.inpainting import slice_inputs  # noqa: E402
from sciimg_jax.inpainting import volume_inpainter  # noqa: E402

# name: `sampling` keys changed from the model's own training config.
SETTINGS = {
    "ddim 25": {"steps": 25},
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
  c = model.config
  sources = input_pipeline.slice_sources(c.data, data_sources.source_dirs(c.data, args.workdir),
                                         data_sources.cache_dir(c.data, args.workdir))
  batch = input_pipeline.make_batch(c.data, sources["eval"],
                                    slice_inputs.sample_indices(c, sources["eval"], args.num_slices))
  _, mask = slice_inputs.known_and_mask(c.data.conditions, batch["cond"])
  target = batch["target"]

  def error(result):
    return float((((result - target) / 2.0) ** 2 * mask).sum() / mask.sum())

  print(f"{args.workdir} ({c.diffusion.parameterization}, trained {c.train.num_steps} steps): "
        f"in-mask error on {args.num_slices} held-out slices")
  print(f"{'setting':<20}{'1 sample':>10}{f'mean of {args.samples}':>12}{'s/batch':>9}")
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
    print(f"{name:<20}{one:>10.4f}{error(np.mean(results, axis=0)):>12.4f}"
          f"{seconds:>9.2f}", flush=True)


if __name__ == "__main__":
  main()
