"""Seconds per volume of every inpainting method, and N samples batched against N calls.

  python bench/inpaint_methods.py                    # 4 mm and 2 mm embedded subjects
  python bench/inpaint_methods.py --resolutions=4 --steps=25 --samples=4

The volume is a held-out embedded subject (`synthetic_brats.synthesize_subject`) at each
resolution, normalised and padded to multiples of 16 as the inpainting job does. The
networks are the quickstart's slice models (configs/quickstart.py), randomly initialised:
timing does not depend on the weights. Each method runs once to compile and is then timed
(`seconds`); the first call's time is printed beside (`compile+1st`). Then
`hierarchical/none` with `sampling.num_samples = N` (one jitted call, the sampler vmapped
over N keys) against N separate one-sample calls.
"""

import argparse
import time

from sciimg_jax.core import xla_flags

xla_flags.set_cpu_flags()  # before JAX starts

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from configs import quickstart  # noqa: E402
from data_pipelines import synthetic_brats  # noqa: E402
from sciimg_jax.core import intensity  # noqa: E402
from sciimg_jax.core import sharding  # noqa: E402
from sciimg_jax.core import slice_task  # noqa: E402
from sciimg_jax.core import volumes  # noqa: E402
from sciimg_jax.inpainting import inpaint_job  # noqa: E402
from sciimg_jax.inpainting import slice_inputs  # noqa: E402
from sciimg_jax.inpainting import volume_inpainter  # noqa: E402

METHODS = ("biharmonic/none", "harmonic/none", "axial/none", "coronal/none", "tpdm/none",
           "average/none", "hierarchical/none", "hierarchical/fixed", "hierarchical/adaptive")


def case(resolution_mm):
  vols, _ = synthetic_brats.synthesize_subject(synthetic_brats.EVAL_FIRST_SUBJECT,
                                               resolution_mm=resolution_mm)
  voided, mask = vols["t1n-voided"], vols["mask"].astype(np.float32)
  shape = tuple(-(-n // 16) * 16 for n in voided.shape)
  lo, hi = intensity.percentile_range(voided)
  x = volumes.center_pad_crop(intensity.normalize(voided, lo, hi), shape, -1.0)
  m = volumes.center_pad_crop(mask, shape, 0.0)
  return np.where(m > 0, np.float32(-1.0), x).astype(np.float32), m, voided.shape


def models_for(shape, mesh):
  out = {}
  for name, size in (("axial", shape[:2]), ("coronal", (shape[0], shape[2]))):
    c = quickstart.slice_model(name)
    c.data.image_size = size
    slice_task.with_in_channels(c, slice_inputs.InpaintingSlices())
    out[name] = volume_inpainter.fresh_slice_model(c, name, mesh)
  return out


def timed(fn):
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  start = time.perf_counter()
  fn()
  return first, time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--resolutions", default="4,2", help="comma list of mm: 4, 2 (1 for a GPU)")
  parser.add_argument("--steps", type=int, default=25, help="sampling steps per stage")
  parser.add_argument("--samples", type=int, default=4)
  parser.add_argument("--methods", default=",".join(METHODS))
  args = parser.parse_args()
  mesh = sharding.make_mesh()
  base = quickstart.get_config()
  base.sampling.steps = args.steps
  key = jax.random.key(0)
  print(f"JAX {jax.__version__} on {jax.device_count()} {jax.devices()[0].device_kind}; "
        f"{args.steps} steps per stage, max_loops {base.pipeline.resampling.max_loops}")
  for res in (int(r) for r in args.resolutions.split(",")):
    voided, mask, native = case(res)
    models = models_for(voided.shape, mesh)
    print(f"\n{res} mm: volume {native} padded to {voided.shape}, mask {int(mask.sum())} voxels")
    print(f"{'method':<24}{'seconds':>10}{'compile+1st':>14}")

    def inpainter(method, num_samples=1):
      c = ml_collections.ConfigDict(base.to_dict())
      c.pipeline.method, c.pipeline.resampling.mode = method.split("/")
      c.sampling.num_samples = num_samples
      return inpaint_job.build_inpainter(c, models, mesh)

    for method in args.methods.split(","):
      run = inpainter(method)
      first, seconds = timed(lambda: run(voided, mask, key))
      print(f"{method:<24}{seconds:>10.2f}{first:>14.2f}", flush=True)
    n = args.samples
    batched, single = inpainter("hierarchical/none", n), inpainter("hierarchical/none")
    _, t_batched = timed(lambda: batched(voided, mask, key))
    _, t_single = timed(lambda: [single(voided, mask, jax.random.fold_in(key, i))
                                 for i in range(n)])
    print(f"hierarchical/none, {n} samples: one batched call {t_batched:.2f} s, {n} calls "
          f"{t_single:.2f} s ({t_single / t_batched:.2f}x)")


if __name__ == "__main__":
  main()
