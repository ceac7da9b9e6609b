"""Seconds per volume at equal quality: the fewest sampling steps, ours against a MONAI loop.

  python bench/inpaint_steps.py --workdir=runs/study-edm-ln --cases=4 \
      --steppers=dpm++2m@karras,ddim --steps=100,50,25,15 --peer-python=/tmp/peer/bin/python

For the trained axial and coronal models in `<workdir>/axial` and `<workdir>/coronal`
(the study's, `configs/inpainting/study.py`), on the first `--cases` held-out subjects of
their data, the hierarchical sampler without resampling loops (`resampling.mode = none`,
the same walk for every stepper) is run at each of `--steps` with each of `--steppers`
(`stepper` or `stepper@spacing`: DDIM, DPM-Solver++ 2M; uniform or karras steps). One
sample a case, from the case's own key: with a deterministic stepper (eta 0) every
setting follows the same probability-flow ODE from the same noise, so the settings differ
only by their solver error. It prints the mean BraTS PSNR and SSIM in the healthy mask,
the texture ratio of the sample, and seconds per volume: `s/volume` after one warm-up
call per case, `cold` the first call of each case on a fresh sampler (a folder run:
compilation included). The reference (`--reference`, by default the first setting at
the most steps) should be the best-converged solution of the ODE; a setting keeps the
quality when its texture is within 0.03 of the reference's and its PSNR not more than
0.1 dB below. Texture is what fewer steps lose first: a coarse walk of a realistic model
gives a smoother sample, whose one-sample PSNR goes up, not down. At the fastest
setting that keeps the quality, it prints where a volume's seconds go (`time_split`):
host preparation, the jitted walk, and the network evaluations within it.

The peer (`--peer-python`, a Python with torch and MONAI) runs the same workload the way
a PyTorch user writes it (`inpaint_volume.PEER_MONAI`): MONAI's `DiffusionModelUNet` of
the same size and inputs (random weights: time does not depend on them), its
`DDIMScheduler`, a Python loop over steps and chunks of mask slices, known-region
replacement after every step, with as many torch threads as cores, at DDIM's own fewest
uniform steps that keep the quality (the trained models' DDIM, measured here: the peer
would sample the same network with the same scheduler). The last line is the ratio of
seconds per volume at equal quality.
"""

import argparse
import os
import pathlib
import sys
import tempfile
import time

from sciimg_jax.core import xla_flags

xla_flags.set_cpu_flags()  # before JAX starts

import jax  # noqa: E402
import jax.numpy as jnp
import numpy as np

import inpaint_volume  # bench/inpaint_volume.py, beside this script
import peer
from configs.inpainting import inpaint
from data_pipelines import brats_layout
from data_pipelines import sources
from sciimg_jax.core import image_metrics
from sciimg_jax.core import intensity
from sciimg_jax.core import reports
from sciimg_jax.core import sharding
from sciimg_jax.core import volumes
from sciimg_jax.core.diffusion import volume_denoisers
from sciimg_jax.inpainting import brats_metrics
from sciimg_jax.inpainting import volume_inpainter


def load_cases(data, workdir, num, shape):
  """[(name, normalised voided, mask, (lo, hi), raw case)] of the first `num` held-out cases."""
  eval_dir = sources.source_dirs(data, workdir)["eval"]
  keys = ("t1n", "t1n-voided", "mask", "mask-healthy")
  out = []
  for case_dir in brats_layout.find_cases(eval_dir, keys)[:num]:
    case = brats_layout.load_case(case_dir, keys=keys)
    voided, mask = case.volumes["t1n-voided"], case.volumes["mask"]
    lo, hi = intensity.percentile_range(voided)
    x = volumes.center_pad_crop(intensity.normalize(voided, lo, hi), shape, -1.0)
    m = volumes.center_pad_crop(mask, shape, 0.0)
    out.append((case.name, np.where(m > 0, -1.0, x).astype(np.float32), m, (lo, hi), case))
  return out


def run_setting(inpainter, cases):
  """dict(psnr, ssim, texture, seconds, cold) of a fresh `inpainter` on the cases: means
  over the cases; `cold` is the first call's seconds (compilation included), `seconds`
  the second's."""
  psnr, ssim, texture, seconds, cold = [], [], [], [], []
  for name, x, m, (lo, hi), case in cases:
    key = reports.case_key(jax.random.key(0), name)
    t0 = time.perf_counter()
    np.asarray(inpainter(x, m, key))
    cold.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    out = np.asarray(inpainter(x, m, key))
    seconds.append(time.perf_counter() - t0)
    raw = intensity.denormalize(volumes.center_pad_crop(np.clip(out, -1, 1), case.shape, -1.0),
                                lo, hi)
    v = case.volumes
    pred = np.where(v["mask"] > 0, raw, v["t1n-voided"])
    s = brats_metrics.official_scores(pred, v["t1n"], v["t1n-voided"], v["mask-healthy"])
    psnr.append(s["psnr"])
    ssim.append(s["ssim"])
    texture.append(image_metrics.texture_ratio(pred, v["t1n"], v["mask-healthy"]))
  return {k: float(np.mean(v)) for k, v in dict(psnr=psnr, ssim=ssim, texture=texture,
                                                   seconds=seconds, cold=cold).items()}


def best_of(fn, repeats=3):
  """The least wall time of `repeats` calls of `fn` after one warm-up call."""
  return min(peer.time_steps(fn, 1, repeats))


def time_split(inpainter, cases):
  """Where a volume's seconds go, per case: host preparation (`prepare`: the prior, the
  restricted slices), the jitted walk, and one network evaluation of each stage's model on
  the case's slices (a stage evaluates start + 1 times), so the walk's share that is not
  network evaluations shows."""
  params = inpainter.sampler.params()
  keys = inpainter.sampler.keys(jax.random.key(0))
  print(f"{'case':<22}{'prepare':>9}{'walk':>8}{'network evaluations':>24}{'rest':>8}")
  for name, x, m, _, _ in cases:
    case = inpainter.prepare(x, m)
    prepare = best_of(lambda: inpainter.prepare(x, m))
    run = inpainter.sampler.compile(inpainter.name, inpainter._sample, params, case)
    device_case = jax.device_put(case)
    walk = best_of(lambda: jax.block_until_ready(run(params, device_case, keys)))
    cond = jnp.stack([jnp.asarray(case[k]) for k in ("known", "mask", "prior")], -1)
    evals, parts = 0.0, []
    for stage, start in zip(inpainter.stages, inpainter.starts):
      denoise = jax.jit(lambda p, x_t, stage=stage: inpainter.sampler.model_denoiser(
          stage.denoiser, p, cond, case.get("slices"))(x_t, jnp.int32(500)))
      x_t = jnp.zeros(inpainter.volume_shape)
      one = best_of(lambda: jax.block_until_ready(denoise(params, x_t)))
      evals += (start + 1) * one
      parts.append(f"{start + 1}x{one:.3f}")
    print(f"{name:<22}{prepare:>9.3f}{walk:>8.3f}{' + '.join(parts):>24}{walk - evals:>8.3f}")


def peer_seconds(args, inpainter, models, cases, steps):
  """Seconds per volume of the MONAI loop at DDIM `steps` on the same cases' shapes."""
  c = models["axial"].config.model
  net = dict(channels=list(c.channels), attention_levels=list(c.attention_levels),
             num_res_blocks=c.num_res_blocks, num_head_channels=c.num_head_channels,
             norm_num_groups=c.num_groups, in_channels=c.in_channels)
  totals = []
  with tempfile.TemporaryDirectory() as tmp:
    for name, x, m, _, _ in cases:
      case = inpainter.prepare(x, m)
      cond = np.stack([case["known"], case["mask"], case["prior"]], -1)
      stages, arrays = [], dict(voided=x, mask=m)
      for stage, schedule, start in zip(inpainter.stages, inpainter.schedules, inpainter.starts):
        model = inpainter.models[stage.denoiser]
        arrays[f"cond_{model.axis}"] = np.asarray(model.with_context(cond, xp=np))[
            ..., np.asarray(model.channels)]
        slices = volume_denoisers.active_slices(
            m, model.axis, dilation=inpainter.config.pipeline.mask_dilation)
        stages.append(dict(axis=model.axis, steps=steps,
                           start_t=int(np.asarray(schedule.timesteps)[start]),
                           slices=[int(k) for k in slices]))
      path = os.path.join(tmp, f"{name}.npz")
      np.savez(path, **arrays)
      result = peer.run(args.peer_python, inpaint_volume.PEER_MONAI,
                        dict(case=path, stages=stages, chunk_size=args.chunk_size,
                             threads=os.cpu_count(), net=net))
      if result is None:
        return None
      totals.append(result["total"])
  return float(np.mean(totals))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="holds axial/ and coronal/ training runs")
  parser.add_argument("--cases", type=int, default=4)
  parser.add_argument("--steps", default="25,10,5,3")
  parser.add_argument("--steppers", default="ddim,dpm++2m",
                      help="comma list of stepper or stepper@spacing (uniform, karras)")
  parser.add_argument("--chunk_size", type=int, default=16)
  parser.add_argument("--reference", default="",
                      help="setting@steps of the reference (default: the first at the most)")
  parser.add_argument("--peer-python", default="", help="python with torch and monai")
  parser.add_argument("--peer-steps", type=int, default=0,
                      help="the peer's DDIM steps (default: DDIM's fewest at equal quality)")
  args = parser.parse_args()
  workdir = pathlib.Path(args.workdir)
  mesh = sharding.make_mesh()
  models = {name: volume_inpainter.load_slice_model(workdir / name, name, mesh)
            for name in volume_inpainter.MODELS}

  def inpainter(setting, steps):
    stepper, _, spacing = setting.partition("@")
    c = inpaint.get_config()
    c.pipeline.resampling.mode = "none"
    c.sampling.update(dict(steps=steps, stepper=stepper, chunk_size=args.chunk_size,
                           spacing=spacing or "uniform"))
    c.sampling.stage2.update(dict(steps=steps, stepper=stepper))
    return volume_inpainter.VolumeInpainter(c, models=models, mesh=mesh)

  probe = inpainter("ddim", 1)
  cases = load_cases(models["axial"].config.data, workdir / "axial", args.cases,
                     probe.volume_shape)
  steps = sorted((int(s) for s in args.steps.split(",")), reverse=True)
  settings = args.steppers.split(",")
  print(f"JAX {jax.__version__} on {jax.device_count()} {jax.devices()[0].device_kind}; "
        f"{len(cases)} held-out cases of {workdir} ({probe.parameterization} chain); "
        "hierarchical, no resampling loops, one sample")
  print(f"{'setting':<18}{'steps':>6}{'PSNR':>9}{'SSIM':>9}{'texture':>9}{'s/volume':>10}"
        f"{'cold':>8}")
  results = {}
  for setting in settings:
    for n in steps:
      r = results[setting, n] = run_setting(inpainter(setting, n), cases)
      print(f"{setting:<18}{n:>6}{r['psnr']:>9.3f}{r['ssim']:>9.4f}{r['texture']:>9.3f}"
            f"{r['seconds']:>10.2f}{r['cold']:>8.2f}", flush=True)
  ref_setting, _, ref_steps = args.reference.rpartition("@")
  ref_key = (ref_setting, int(ref_steps)) if args.reference else (settings[0], steps[0])
  ref = results[ref_key]
  keeps = {k: v for k, v in results.items() if v["psnr"] >= ref["psnr"] - 0.1
           and abs(v["texture"] - ref["texture"]) <= 0.03}
  ours = min(keeps.items(), key=lambda kv: kv[1]["seconds"])
  ddim_steps = min((n for (s, n) in keeps if s == "ddim"), default=steps[0])
  if not any(s == "ddim" for s, _ in keeps):
    print("DDIM on uniform steps does not reach the reference's quality at any step count "
          "tried; the peer runs at the most")
  print(f"equal quality with {ref_key[0]} {ref_key[1]} (PSNR >= {ref['psnr'] - 0.1:.3f} dB, "
        f"texture {ref['texture']:.3f} ± 0.03): ours {ours[0][0]} {ours[0][1]} steps, "
        f"{ours[1]['seconds']:.2f} s/volume; DDIM's fewest uniform steps: {ddim_steps}")
  print(f"\nwhere the seconds go at {ours[0][1]} steps ({ours[0][0]}), best of 3:")
  time_split(inpainter(*ours[0]), cases)
  if args.peer_python:
    ddim_steps = args.peer_steps or ddim_steps
    monai = peer_seconds(args, inpainter("ddim", ddim_steps), models, cases, ddim_steps)
    if monai is not None:
      print(f"monai-loop DDIM {ddim_steps} steps: {monai:.2f} s/volume (sampler only); "
            f"monai / ours = {monai / ours[1]['seconds']:.2f}")


if __name__ == "__main__":
  sys.exit(main())
