r"""Memory per device of the trainer's step, with and without rematerialisation and accumulation.

For a training config (default `configs/inpainting/axial.py`: 256x256 slices, batch 16, U-Net
channels 64/128/256/256, attention at 32x32), the trainer's own step
(`trainer.make_train_step`, the loss of the slice models: `unet_train_step.ReferenceTask`) is
compiled once per row, and XLA's memory analysis of the compiled step
(`sciimg_jax.core.memory.compiled_bytes`: arguments + outputs + temporaries − aliases, the
figure the trainer checks before its first step) is printed in GiB per device:

  plain            the config as it is
  remat            model.remat=True (each U-Net block recomputed in the backward pass)
  accumulate-k     optim.accumulate_steps=k (k micro-batches of batch/k, one update)
  remat+accumulate-k
  bfloat16         train.compute_dtype=bfloat16 (what 'auto' picks on GPU/TPU)

With `--steps N` each row that fits is also run N times after a first call, and the median
seconds per step printed (CPU: minutes per step at 256x256; use it on an accelerator), with
the device's peak memory in use (`memory_stats()['peak_bytes_in_use']`, where the backend
reports it: GPU/TPU) after the row. `--dtype=bfloat16` runs every row in bfloat16; `--json`
writes the rows to a file as well (bench/accelerator_check.py reads it). A config path may
name a variant (`configs/inpainting/axial.py:tiny`).

    python bench/train_memory.py                               # the BraTS axial config
    python bench/train_memory.py --config=configs/inpainting/coronal.py --size=240
    python bench/train_memory.py --size=64 --batch=8 --steps=3  # small and timed
    python bench/train_memory.py --dtype=bfloat16 --rows=remat --steps=5 --json=/tmp/remat.json

The figures are XLA's buffer assignment for the backend it runs on: on CPU the CPU
compiler's, on GPU the GPU compiler's (which fuses and schedules differently, so they differ
by tens of percent); they are what the trainer compares with the device's memory.
"""

import argparse
import importlib.util
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sciimg_jax.core import xla_flags  # noqa: E402

xla_flags.set_cpu_flags()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from sciimg_jax.core import memory  # noqa: E402
from sciimg_jax.core import precision  # noqa: E402
from sciimg_jax.core import sharding  # noqa: E402
from sciimg_jax.core import slice_task  # noqa: E402
from sciimg_jax.core import trainer  # noqa: E402
from sciimg_jax.inpainting import slice_inputs  # noqa: E402
from unet_train_step import ReferenceTask  # bench/unet_train_step.py  # noqa: E402


def rows(ks):
  out = {"plain": {}, "remat": {"model.remat": True}}
  for k in ks:
    out[f"accumulate-{k}"] = {"optim.accumulate_steps": k}
    out[f"remat+accumulate-{k}"] = {"model.remat": True, "optim.accumulate_steps": k}
  out["bfloat16"] = {"train.compute_dtype": "bfloat16"}
  return out


def load_config(path, args):
  path, _, variant = path.partition(":")
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(variant) if variant else module.get_config()
  c.data.batch_size = args.batch or c.data.batch_size
  if args.size:
    c.data.image_size = (args.size, args.size)
  c.train.compute_dtype = args.dtype
  return slice_task.with_in_channels(c, slice_inputs.InpaintingSlices())


def peak_bytes():
  """The device's peak memory in use so far, or None where the backend does not say (CPU)."""
  stats = jax.devices()[0].memory_stats()
  return (stats or {}).get("peak_bytes_in_use")


def measure(config, steps):
  """(GiB per device from XLA's analysis, median s / step or None) of the trainer's step."""
  trainer.check_config(config)
  task, mesh = ReferenceTask(config), sharding.make_mesh()
  net, state, tx, lr = trainer.create_train_state(task, config, mesh)
  step = trainer.make_train_step(task, net, tx, lr, config.optim.ema_decay, mesh,
                                 config.optim.accumulate_steps)
  b, (h, w) = config.data.batch_size, config.data.image_size
  rng = np.random.default_rng(0)
  batch = sharding.shard_batch({
      "target": rng.uniform(-1, 1, (b, h, w, 1)).astype(np.float32),
      "cond": rng.uniform(-1, 1, (b, h, w, config.model.in_channels - 1)).astype(np.float32)},
      mesh)
  key = jax.random.key(0)
  compiled = step.lower(state, batch, key, None).compile()
  gib = memory.compiled_bytes(compiled) / memory.GIB
  if not steps or gib * memory.GIB > (memory.device_bytes() or float("inf")):
    return gib, None
  state, metrics = compiled(state, batch, key, None)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch, key, None)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return gib, float(np.median(times))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/inpainting/axial.py")
  parser.add_argument("--size", type=int, default=0, help="slice size (default: the config's)")
  parser.add_argument("--batch", type=int, default=0, help="global batch (default: the config's)")
  parser.add_argument("--accumulate", default="2,4", help="micro-batch counts, comma-separated")
  parser.add_argument("--rows", default="", help="rows to run, comma-separated (default: all)")
  parser.add_argument("--steps", type=int, default=0, help="timed steps per row (0: memory only)")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                      help="compute dtype of every row (parameters stay float32)")
  parser.add_argument("--json", default="", help="also write the rows to this JSON file")
  args = parser.parse_args()
  base_config = load_config(args.config, args)
  device = jax.devices()[0]
  c = base_config
  print(f"{args.config}: {c.data.image_size[0]}x{c.data.image_size[1]} slices, batch "
        f"{c.data.batch_size}, channels {tuple(c.model.channels)}, {jax.device_count()} "
        f"{device.platform} device(s) ({device.device_kind}); device memory "
        f"{memory.device_bytes() / memory.GIB:.1f} GiB; jax {jax.__version__}")
  print("| row | GiB per device (XLA) | s / step | peak in use (GiB) |")
  print("| --- | --- | --- | --- |", flush=True)
  results = []
  selected = rows([int(k) for k in args.accumulate.split(",") if k])
  for name, overrides in selected.items():
    if args.rows and name not in args.rows.split(","):
      continue
    config = base_config.copy_and_resolve_references()
    for key, value in overrides.items():
      group, field = key.split(".")
      config[group][field] = value
    gib, seconds = measure(config, args.steps)
    peak = peak_bytes()
    timed = "" if seconds is None else f"{seconds:.2f}"
    shown = "" if peak is None else f"{peak / memory.GIB:.2f}"
    print(f"| {name} | {gib:.2f} | {timed} | {shown} |", flush=True)
    results.append(dict(
        row=name, dtype=precision.compute_dtype(config).name, xla_gib=gib,
        seconds_per_step=seconds, steps=args.steps, batch=config.data.batch_size,
        image_size=list(config.data.image_size), channels=list(config.model.channels),
        peak_gib=None if peak is None else peak / memory.GIB,
        device_gib=None if memory.device_bytes() is None else memory.device_bytes() / memory.GIB,
        backend=device.platform, device_kind=device.device_kind))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
