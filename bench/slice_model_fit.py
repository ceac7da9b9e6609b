"""Over-fitting check of a trained slice model: its denoising error on training and held-out slices.

  python bench/slice_model_fit.py --workdir=runs/inpaint_study/axial --name=axial

For 64 training and 64 held-out slices that meet their subject's own mask, at fixed noise
levels t (same noise for both sets), prints the error inside the mask of the model's x0
estimate (on the [0, 1] scale, x0 clipped to [-1, 1]), from the EMA parameters of the
latest checkpoint. A held-out error well above the training one is over-fitting; it is
what `sample_mse_in_mask` rising with training steps cannot tell apart from samples that
grow more varied.
"""

import argparse

from sciimg_jax.core import xla_flags

xla_flags.set_cpu_flags()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from data_pipelines import input_pipeline  # noqa: E402
from data_pipelines import sources as data_sources  # noqa: E402
from sciimg_jax.core import sharding  # noqa: E402
from sciimg_jax.core.diffusion import schedules  # noqa: E402
from sciimg_jax.inpainting import slice_inputs  # noqa: E402
from sciimg_jax.inpainting import volume_inpainter  # noqa: E402

NOISE_LEVELS = (25, 100, 250, 500, 750, 950)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a slice model's training folder")
  parser.add_argument("--name", default="axial", choices=["axial", "coronal"])
  parser.add_argument("--num_slices", type=int, default=64)
  args = parser.parse_args()
  model = volume_inpainter.load_slice_model(args.workdir, args.name, sharding.make_mesh())
  c = model.config
  sources = input_pipeline.slice_sources(c.data, data_sources.source_dirs(c.data, args.workdir),
                                         data_sources.cache_dir(c.data, args.workdir))
  schedule = schedules.schedule_from_config(c.diffusion)
  m = list(c.data.conditions).index("mask")
  # the batch's channels are the run's data.conditions: call the network on them directly
  apply = jax.jit(lambda p, x, cond, t: model.trained.net(
      p, jnp.concatenate([x, cond], -1), t).astype(jnp.float32))
  print(f"{args.workdir} ({c.diffusion.parameterization}): in-mask x0 error at t = "
        + ", ".join(map(str, NOISE_LEVELS)))
  for split in ("train", "eval"):
    batch = input_pipeline.make_batch(
        c.data, sources[split], slice_inputs.sample_indices(c, sources[split], args.num_slices))
    x0, cond = jnp.asarray(batch["target"]), jnp.asarray(batch["cond"])
    mask = cond[..., m:m + 1]
    errors = []
    for level in NOISE_LEVELS:
      t = jnp.full((x0.shape[0],), level)
      x_t = schedules.q_sample(schedule, x0, t, jax.random.normal(jax.random.key(level), x0.shape))
      x0_hat, _ = schedules.predict_x0_eps(schedule, c.diffusion.parameterization, x_t, t,
                                           apply(model.params, x_t, cond, t))
      err = ((jnp.clip(x0_hat, -1.0, 1.0) - x0) / 2.0) ** 2 * mask
      errors.append(float(err.sum() / mask.sum()))
    print(f"  {split:<6}" + "".join(f"{e:>9.4f}" for e in errors))


if __name__ == "__main__":
  main()
