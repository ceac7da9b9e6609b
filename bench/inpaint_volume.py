"""Times the hierarchical inpainting of one BraTS-size volume with the reference 2D network.

  python bench/inpaint_volume.py                         # 240x240x155, 50 + 50 steps
  python bench/inpaint_volume.py --scale=0.5 --steps=10  # a CPU-sized run
  python bench/inpaint_volume.py --scale=0.5 --steps=4 --chunk_size=16 --skip=jit-all \
      --peer monai --peer-python /tmp/peer/bin/python    # against a MONAI loop

Volume: 240x240x155 (scaled by --scale), an ellipsoidal lesion-size mask (radii 22,
18, 14 voxels at full scale), random-initialised reference networks (2D, in 3,
out 1, channels 32/64/128, 2 res blocks, attention at the lowest level; timing
does not depend on the weights), no resampling loops (`resampling.mode = 'none'`).
Axial slices are padded to a multiple of 16, coronal slices likewise. Prints seconds for stage 1 (axial, from noise), stage 2
(coronal, SDEdit from t0) and the total:
  jit            the whole sampler under one jit, only slices that meet the mask
  jit-all        the same, every slice evaluated
  python-loop    a Python loop over steps and slice chunks calling the same jitted
                 network (the way the PyTorch originals run), only mask slices
  monai-loop     (--peer monai) the same workload written the way a PyTorch user would,
                 run by --peer-python with torch and MONAI: MONAI's DiffusionModelUNet
                 with the reference config, MONAI's DDIMScheduler, a Python loop over
                 steps and over chunks of at most chunk_size mask slices (the last one
                 smaller, no padding), known-region replacement after every step, under
                 torch.inference_mode with as many torch threads as there are cores
Each is timed after one warm-up call (compilation excluded; reported separately).
`--skip=stage1` leaves out the axial-only calls that split stage 1 from the total (half the
compilation); `--json` also writes the rows to a file (bench/accelerator_check.py reads it):

  python bench/inpaint_volume.py --steps=3 --skip=stage1,jit-all,python-loop --json=/tmp/i.json
"""

import argparse
import functools
import json
import os
import sys
import tempfile
import time

from sciimg_jax.core import xla_flags

xla_flags.set_cpu_flags()  # before JAX starts

import jax  # noqa: E402
import jax.numpy as jnp
import numpy as np

import peer  # bench/peer.py, beside this script
from configs.inpainting import common
from configs.inpainting import inpaint
from sciimg_jax.core import sharding
from sciimg_jax.core import slice_task
from sciimg_jax.core.diffusion import schedules
from sciimg_jax.core.diffusion import steppers
from sciimg_jax.core.diffusion import volume_denoisers
from sciimg_jax.inpainting import known_region
from sciimg_jax.inpainting import slice_inputs
from sciimg_jax.inpainting import volume_inpainter


def reference_model(axis, image_size):
  c = common.get_base_config()
  c.data.axis = axis
  c.data.image_size = image_size
  return slice_task.with_in_channels(c, slice_inputs.InpaintingSlices())


def make_case(shape, scale):
  x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
  c = np.array(shape) / 2
  brain = ((x - c[0]) / (0.4 * shape[0])) ** 2 + ((y - c[1]) / (0.45 * shape[1])) ** 2 + (
      (z - c[2]) / (0.45 * shape[2])) ** 2 < 1
  r = np.array([22, 18, 14]) * scale
  lesion = ((x - c[0] - 20 * scale) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + (
      (z - c[2] - 10 * scale) / r[2]) ** 2 < 1
  rng = np.random.default_rng(0)
  voided = np.where(brain & ~lesion, rng.uniform(-0.5, 0.8, shape), -1.0).astype(np.float32)
  return voided, lesion.astype(np.float32)


@functools.partial(jax.jit, static_argnames=("stepper", "parameterization", "eta"))
def step_and_replace(schedule, x, i, model_out, key, known, mask, *, stepper, parameterization,
                     eta):
  """One sampler step, then the known region re-imposed (one jitted call per step)."""
  x = steppers.STEPPERS[stepper](schedule, parameterization, x, i, model_out,
                                 jax.random.fold_in(key, i), eta=eta, clip_x0=1.0)
  return known_region.known_region_replacement(schedule, known, mask)(
      x, i, jax.random.fold_in(key, 10_000 + i))


def python_loop(inp, voided, mask, key):
  """Stage by stage, step by step, chunk by chunk from Python, as the PyTorch originals do."""
  p, chunk_size = inp.config.pipeline, inp.config.sampling.chunk_size
  known, mask_d = jnp.asarray(voided), jnp.asarray(mask)
  x = None
  for n, (stage, schedule, start) in enumerate(zip(inp.stages, inp.schedules, inp.starts)):
    model = inp.models[stage.denoiser]
    apply = jax.jit(lambda params, x, c, t, m=model: m.output(params, x, c, t))
    idx = volume_denoisers.active_slices(mask, model.axis, dilation=p.mask_dilation)
    cond = np.moveaxis(np.stack([voided, mask], -1), model.axis, 0)
    noise = jax.random.normal(jax.random.fold_in(key, n), voided.shape)
    x = noise if x is None else schedules.q_sample(
        schedule, x, jnp.full((x.shape[0],), start), noise)
    for i in range(start, -1, -1):
      moved = np.moveaxis(np.asarray(x), model.axis, 0)
      eps = np.zeros_like(moved)
      t = jnp.full((chunk_size,), schedule.timesteps[i], jnp.int32)
      for c0 in range(0, len(idx), chunk_size):
        chunk = idx[c0:c0 + chunk_size]
        pad = chunk_size - len(chunk)
        chunk_p = np.concatenate([chunk, np.full(pad, chunk[-1])])
        out = apply(model.params, moved[chunk_p][..., None], cond[chunk_p], t)
        eps[chunk] = np.asarray(out)[:len(chunk), ..., 0]
      eps = jnp.asarray(np.moveaxis(eps, 0, model.axis))
      x = step_and_replace(schedule, x, i, eps, key, known, mask_d, stepper=stage.walk.stepper,
                           parameterization=inp.parameterization, eta=stage.walk.eta)
  return np.asarray(x)


PEER_MONAI = r"""
import json, sys, time
import numpy as np, torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
torch.manual_seed(0)
case = np.load(a["case"])
voided, mask = torch.from_numpy(case["voided"]), torch.from_numpy(case["mask"])
net = a.get("net", dict(channels=[32, 64, 128], attention_levels=[False, False, True],
                       num_res_blocks=2, num_head_channels=32, norm_num_groups=8, in_channels=3))
def network():
  kw = {k: tuple(v) if isinstance(v, list) else v for k, v in net.items()}
  return DiffusionModelUNet(spatial_dims=2, out_channels=1, **kw).eval()
nets = {s["axis"]: network() for s in a["stages"]}
def inpaint(stages):
  x = None
  for s in stages:
    sched = DDIMScheduler(num_train_timesteps=1000, schedule="linear_beta", beta_start=1e-4,
                          beta_end=0.02, clip_sample=True)
    sched.set_timesteps(s["steps"])
    steps = [int(t) for t in sched.timesteps if t <= s["start_t"]]
    ab = sched.alphas_cumprod
    noise = torch.randn(voided.shape)
    x = noise if x is None else ab[steps[0]].sqrt() * x + (1 - ab[steps[0]]).sqrt() * noise
    net, axis, idx = nets[s["axis"]], s["axis"], s["slices"]
    if f"cond_{axis}" in case:  # (X, Y, Z, C): the model's own channels, context included
      cond = torch.from_numpy(case[f"cond_{axis}"]).movedim(axis, 0).permute(3, 0, 1, 2)
    else:
      cond = torch.stack([voided, mask]).movedim(axis + 1, 1)  # (2, slices, H, W)
    for t in steps:
      moved = x.movedim(axis, 0)
      eps = torch.zeros_like(moved)
      for c0 in range(0, len(idx), a["chunk_size"]):
        chunk = idx[c0:c0 + a["chunk_size"]]
        inp = torch.cat([moved[chunk][:, None], cond[:, chunk].transpose(0, 1)], 1)
        eps[chunk] = net(inp, torch.full((len(chunk),), t, dtype=torch.long))[:, 0]
      x, _ = sched.step(eps.movedim(0, axis), t, x)
      prev = t - sched.num_train_timesteps // sched.num_inference_steps
      ab_prev = ab[prev] if prev >= 0 else torch.tensor(1.0)
      known = ab_prev.sqrt() * voided + (1 - ab_prev).sqrt() * torch.randn(voided.shape)
      x = torch.where(mask > 0, x, known)
  return x
def timed(stages):
  t0 = time.perf_counter()
  with torch.inference_mode():
    inpaint(stages)
  return time.perf_counter() - t0
first = timed(a["stages"])
stage1, total = timed(a["stages"][:1]), timed(a["stages"])
print(json.dumps(dict(stage1=stage1, total=total, first=first, torch=torch.__version__)))
"""


def run_peer(args, hier, voided, mask):
  """Runs the MONAI loop on the same case and stages in `args.peer_python`; its seconds."""
  stages = []
  for stage, schedule, start in zip(hier.stages, hier.schedules, hier.starts):
    model = hier.models[stage.denoiser]
    slices = volume_denoisers.active_slices(mask, model.axis,
                                            dilation=hier.config.pipeline.mask_dilation)
    stages.append(dict(axis=model.axis, steps=stage.walk.steps,
                       start_t=int(np.asarray(schedule.timesteps)[start]),
                       slices=[int(k) for k in slices]))
  with tempfile.TemporaryDirectory() as tmp:
    case = os.path.join(tmp, "case.npz")
    np.savez(case, voided=voided, mask=mask)
    cfg = dict(case=case, stages=stages, chunk_size=args.chunk_size, threads=os.cpu_count())
    return peer.run(args.peer_python, PEER_MONAI, cfg)


def timed(fn, *args):
  t0 = time.perf_counter()
  fn(*args)
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  fn(*args)
  return first, time.perf_counter() - t0


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--scale", type=float, default=1.0, help="volume size relative to 240x240x155")
  parser.add_argument("--steps", type=int, default=50, help="sampling steps per stage")
  parser.add_argument("--t0", type=float, default=0.5)
  parser.add_argument("--chunk_size", type=int, default=32)
  parser.add_argument("--skip", default="",
                      help="comma list of runs to skip: jit-all,python-loop, and stage1 (the "
                      "axial-only calls that time stage 1 alone)")
  parser.add_argument("--json", default="", help="also write the rows to this JSON file")
  parser.add_argument("--peer", default="none", choices=["none", "monai"])
  parser.add_argument("--peer-python", default=sys.executable,
                      help="python with torch and monai, for --peer monai")
  args = parser.parse_args()

  shape = tuple(int(round(n * args.scale)) for n in (240, 240, 155))
  padded = tuple(-(-n // 16) * 16 for n in shape)
  voided, mask = make_case(padded, args.scale)
  mesh = sharding.make_mesh()
  models = {"axial": volume_inpainter.fresh_slice_model(reference_model("axial", padded[:2]),
                                                       "axial", mesh),
            "coronal": volume_inpainter.fresh_slice_model(
                reference_model("coronal", (padded[0], padded[2])), "coronal", mesh)}
  print(f"JAX {jax.__version__} on {jax.device_count()} {jax.devices()[0].device_kind}; volume "
        f"{shape} padded to {padded}; mask {int(mask.sum())} voxels; {args.steps} steps per stage, "
        f"t0={args.t0}; axial slices with mask: "
        f"{len(volume_denoisers.active_slices(mask, 2, dilation=1))}, coronal: "
        f"{len(volume_denoisers.active_slices(mask, 1, dilation=1))}")

  def inpainter(method, restrict):
    c = inpaint.get_config()
    c.pipeline.update(dict(method=method, slice_restriction=restrict))
    c.pipeline.resampling.mode = "none"
    c.sampling.update(dict(steps=args.steps, chunk_size=args.chunk_size))
    c.sampling.stage2.t0 = args.t0
    return volume_inpainter.VolumeInpainter(c, models=models, mesh=mesh)

  key = jax.random.key(0)
  runs = {"jit": True, "jit-all": False}
  skip = set(filter(None, args.skip.split(",")))
  print(f"{'run':<14}{'stage 1 s':>12}{'stage 2 s':>12}{'total s':>12}{'compile+1st s':>16}")
  totals, rows = {}, {}

  def show(name, s1, total, first, note=""):
    split = f"{'':>12}{'':>12}" if s1 is None else f"{s1:>12.2f}{total - s1:>12.2f}"
    print(f"{name:<14}{split}{total:>12.2f}{first:>16.2f}{note}", flush=True)
    rows[name] = dict(stage1_s=s1, total_s=total, first_s=first)

  for name, restrict in runs.items():
    if name in skip:
      continue
    s1 = None if "stage1" in skip else timed(inpainter("axial", restrict), voided, mask, key)[1]
    first, total = timed(inpainter("hierarchical", restrict), voided, mask, key)
    totals[name] = total
    show(name, s1, total, first)
  if args.peer == "monai":
    monai = run_peer(args, inpainter("hierarchical", True), voided, mask)
    if monai:
      show("monai-loop", monai["stage1"], monai["total"], monai["first"],
           f"   (torch {monai['torch']})")
      if "jit" in totals:
        print(f"monai-loop / jit = {monai['total'] / totals['jit']:.2f}")
  if "python-loop" not in skip:
    hier, axial = inpainter("hierarchical", True), inpainter("axial", True)
    s1 = None if "stage1" in skip else timed(python_loop, axial, voided, mask, key)[1]
    first, total = timed(python_loop, hier, voided, mask, key)
    show("python-loop", s1, total, first)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(shape=list(shape), padded=list(padded), steps=args.steps, t0=args.t0,
                     chunk_size=args.chunk_size, mask_voxels=int(mask.sum()),
                     device_kind=jax.devices()[0].device_kind, rows=rows), f, indent=1)


if __name__ == "__main__":
  main()
