"""Seconds per sampling step and peak memory of Diff-Ensembler's fused sampler, against averaging.

  python bench/ensemble_step.py                                    # 2 mm grid and 192x192x152
  python bench/ensemble_step.py --shapes=48x56x48 --steps=5 --config=configs/ensembler/super_resolution.py

For every volume shape, three 2D members (one per axis) and the 3D fusion network of the
study config (`--config`, fresh parameters: the cost does not depend on training) sample a
super-resolved volume, each row in its own process (so that its peak memory is its own):

  average-jit    the whole sampler (`--steps` DDIM steps, data consistency) under one jit
  fused-jit      the same with the fusion network at every step
  fused-loop     a Python loop over the steps, each a call of one jitted step (the
                 same pieces: the members' slice-wise epsilons, the fusion network, the DDIM
                 step and the data consistency), as the released PyTorch code runs

and the fusion's training step (the frozen members on every slice of the example, the
fusion network forward and backward, one Adam update), the released code's options:

  train-crop     random 24^3 crops, batch 2 (the studies' setting)
  train-whole    whole volumes, batch 1 (`fusion.crop_size=()`)
  train-whole-remat   the same with the fusion U-Net's blocks rematerialised (`model.remat`)

`--contexts=0,2` repeats every row with single-slice and 2.5D members (`data.context`: the
condition on 2 slices each side, as the released 2D models see it).

Seconds per step are of a second call. The jitted and training rows are compiled before
their first call (XLA's memory is read from the compiled program), so their first call
excludes compilation; the fused-loop row compiles in its first call. Memory: XLA's analysis of the
compiled program (`sciimg_jax.core.memory.compiled_bytes`, per device, known before it runs;
a row that needs more than the device has is not run) and the measured peak: the device's
`peak_bytes_in_use` on GPU, the process's maximum resident set on CPU.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from sciimg_jax.core import xla_flags

xla_flags.set_cpu_flags()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from configs.ensembler import super_resolution  # noqa: E402
from sciimg_jax.core import memory  # noqa: E402
from sciimg_jax.core import sharding  # noqa: E402
from sciimg_jax.core import slice_task  # noqa: E402
from sciimg_jax.core import trained_models  # noqa: E402
from sciimg_jax.core import volumes  # noqa: E402
from sciimg_jax.core.diffusion import sampler  # noqa: E402
from sciimg_jax.core.diffusion import schedules  # noqa: E402
from sciimg_jax.core.diffusion.steppers import STEPPERS  # noqa: E402
from sciimg_jax.ensembler import consistency  # noqa: E402
from sciimg_jax.ensembler import fusion as fusion_lib  # noqa: E402
from sciimg_jax.ensembler import fusion_task  # noqa: E402
from sciimg_jax.ensembler import members as members_lib  # noqa: E402
from sciimg_jax.ensembler import slice_inputs  # noqa: E402
from sciimg_jax.ensembler import study  # noqa: E402
from sciimg_jax.ensembler import translator as translator_lib  # noqa: E402

ROWS = ("average-jit", "fused-jit", "fused-loop", "train-crop", "train-whole",
        "train-whole-remat")


def build(shape, steps, context=0):
  """A translator with three fresh members and a fresh fusion on volumes of `shape`."""
  c = super_resolution.get_config()
  c.data.volume_shape = shape
  c.data.context = context
  c.sampling.steps = steps
  mesh = sharding.make_mesh()
  directions = [slice_task.with_in_channels(study.direction_config(c, a),
                                            slice_inputs.VolumeSlices())
                for a in c.study.directions]
  members = [members_lib.make_member(trained_models.restore(d, mesh), c.data, c.diffusion)
             for d in directions]
  fc = study.fusion_config(c, c.study.directions)
  fusion = trained_models.restore(
      fc, mesh, create=lambda rngs, dtype: fusion_lib.create_model(fc, rngs, dtype, members))
  return c, translator_lib.VolumeTranslator(c, members, fusion, mesh)


def python_loop(translator, cond, key):
  """The sampler as a Python loop over one jitted step (same denoiser, stepper, consistency)."""
  s, chain = translator.config.sampling, translator.chain
  post = consistency.low_pass_replacement(chain, translator.low_resolution(cond),
                                          translator.pool[1])

  @jax.jit
  def one_step(params, cond, x, i, key):
    t = jnp.full((x.shape[0],), chain.timesteps[i], jnp.int32)
    eps = translator.denoiser("fused", params, cond)(x, t)
    key_i = jax.random.fold_in(key, i)
    x_prev = STEPPERS[s.stepper](chain, "eps", x, i, eps, key_i, eta=s.eta, clip_x0=s.clip_x0)
    return post(x_prev, i, jax.random.fold_in(key_i, sampler.POST_STEP_STREAM))

  def run(params, cond, key):
    x = jax.random.normal(key, cond.shape[:3])
    for i in range(chain.betas.shape[0] - 1, -1, -1):
      x = one_step(params, cond, x, i, key)
    return x.block_until_ready()
  return run


def training_step(c, translator, cond, row):
  """One jitted training step of the fusion (loss, gradients, Adam) on `row`'s examples."""
  task = fusion_task.FusionTask.__new__(fusion_task.FusionTask)  # no data, no workdir
  fc = study.fusion_config(c, c.study.directions)
  fc.model.remat = row.endswith("remat")
  task.config, task.members = fc, translator.members
  task.chain = schedules.schedule_from_config(c.diffusion)
  crop, batch = ((24, 24, 24), 2) if row == "train-crop" else (cond.shape[:3], 1)
  box = tuple(slice(0, n) for n in crop)
  cond = jnp.broadcast_to(cond[box], (batch,) + crop + cond.shape[-1:])
  example = {"cond": cond, "target": cond[..., :1]}
  model = fusion_lib.create_model(fc, nnx.Rngs(0), jnp.float32, task.members)
  optimizer = nnx.Optimizer(model, optax.adam(1e-4), wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  frozen = [m.params for m in task.members]

  def step(state, key):
    model, optimizer = nnx.merge(graphdef, state)
    loss, grads = nnx.value_and_grad(lambda m: task.loss(m, example, key, frozen)[0])(model)
    optimizer.update(model, grads)
    return loss, nnx.state((model, optimizer))

  key = jax.random.key(0)
  compiled = jax.jit(step, donate_argnums=0).lower(state, key).compile()
  holder = [state]

  def call():
    loss, holder[0] = compiled(holder[0], key)
    jax.block_until_ready(loss)
  return compiled, call


def measure(row, shape, steps, context=0):
  c, translator = build(shape, steps, context)
  rng = np.random.default_rng(0)
  low = rng.uniform(-1, 1, tuple(n // 4 for n in shape)).astype(np.float32)
  cond = np.concatenate([np.asarray(consistency.upsample_nearest(low, 4))[..., None],
                         volumes.position_embedding(shape), np.ones(shape + (1,), np.float32)],
                        axis=-1)
  key = jax.random.key(0)
  if row.startswith("train"):
    (compiled, call), steps = training_step(c, translator, jnp.asarray(cond), row), 1
  elif row == "fused-loop":
    run = python_loop(translator, jnp.asarray(cond), key)
    compiled = None  # one small program per step: its memory is that of fused-jit's step
    call = lambda: run(translator.params(), jnp.asarray(cond), key)
  else:
    method = row.split("-")[0]
    compiled = translator.compile(method, cond)
    call = lambda: translator(method, cond, key)
  needed = memory.compiled_bytes(compiled) if compiled is not None else None
  result = {"row": row, "shape": list(shape), "context": context,
            "xla_gib": None if needed is None else needed / memory.GIB,
            "backend": jax.devices()[0].platform}
  if needed is not None and needed > memory.device_bytes():
    return dict(result, seconds_per_step=None, first_call_s=None, peak_gib=None,
                memory="does not fit")
  start = time.perf_counter()
  call()
  first = time.perf_counter() - start
  start = time.perf_counter()
  call()
  seconds = (time.perf_counter() - start) / steps
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  peak = (stats["peak_bytes_in_use"] if stats else
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
  return dict(result, seconds_per_step=seconds, first_call_s=first, peak_gib=peak / 2**30,
              memory="device peak" if stats else "process max RSS")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shapes", default="96x112x96,192x192x152",
                      help="volume shapes, comma-separated (96x112x96: the 2 mm embedded grid)")
  parser.add_argument("--steps", type=int, default=3, help="DDIM steps per call")
  parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows")
  parser.add_argument("--contexts", default="0", help="members' data.context, comma-separated")
  parser.add_argument("--one", default="", help=argparse.SUPPRESS)  # 'row|shape|k': a child
  args = parser.parse_args()
  if args.one:
    row, shape, k = args.one.split("|")
    print(json.dumps(measure(row, tuple(int(n) for n in shape.split("x")), args.steps, int(k))))
    return
  print("| volume | members | row | s / step | first call (s) | XLA's memory (GiB) | peak "
        "memory (GiB) |")
  print("| --- | --- | --- | --- | --- | --- | --- |", flush=True)
  for shape in args.shapes.split(","):
    for k in args.contexts.split(","):
      members = "2.5D (k=%s)" % k if int(k) else "single slice"
      for row in args.rows.split(","):
        out = subprocess.run([sys.executable, __file__, f"--one={row}|{shape}|{k}",
                              f"--steps={args.steps}"], capture_output=True, text=True,
                             env=dict(os.environ))
        if out.returncode:
          print(f"| {shape} | {members} | {row} | failed: "
                f"{out.stderr.strip().splitlines()[-1][:120]} | | | |", flush=True)
          continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        xla = "" if r["xla_gib"] is None else f"{r['xla_gib']:.2f}"
        if r["seconds_per_step"] is None:
          print(f"| {shape} | {members} | {row} | not run: does not fit | | {xla} | |")
          continue
        print(f"| {shape} | {members} | {row} | {r['seconds_per_step']:.2f} | "
              f"{r['first_call_s']:.1f} | {xla} | {r['peak_gib']:.2f} ({r['memory']}, "
              f"{r['backend']}) |", flush=True)


if __name__ == "__main__":
  main()
