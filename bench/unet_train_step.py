r"""Train-step speed of the diffusion U-Net, and of MONAI's `DiffusionModelUNet` beside it.

What is timed is the trainer's own step, `sciimg_jax.core.trainer.make_train_step` (the jitted,
state-donating function `train` calls; built with `create_train_state` from the base config),
for a minimal task (`ReferenceTask`) with the reference network and the slice models' loss.
One step is: t ~ U{0..999} and noise drawn per example, x_t = q_sample(x0, t, noise), the
U-Net on concat(x_t, 2 conditioning channels), the epsilon-MSE loss
(`schedules.conditional_denoising_loss`), its gradient, global-norm clipping (1.0), the
AdamW update with the warmup-cosine learning rate, and the EMA of the parameters (0.999),
on one fixed random batch (target and conditions in [-1, 1]; by default 64x64, batch 16)
split over the device mesh. Reference network: 2D, in 3 / out 1, channels (32, 64, 128), two
residual blocks per level, attention at the last level, 32 channels per head, 8 groups;
3,939,969 parameters.
Prints the parameter count, ms per step (median over --steps steps after --warmup, each timed
with block_until_ready on the new state and metrics; the minimum too), slices/s, the model
FLOPs of one step from XLA's cost analysis of the compiled step, achieved FLOP/s, and on GPU
the MFU against the chip's dense peak for the compute dtype. With `--peer monai` MONAI's
network (same config and batch size, AdamW, epsilon-MSE loss against random targets on a
random 3-channel input, no noising, clipping or EMA, `torch.set_num_threads` = our CPU count)
runs in a subprocess with `--peer-python`, and the ratio is printed.

    python bench/unet_train_step.py --peer monai --peer-python /tmp/peer/bin/python
    python bench/unet_train_step.py --batch=1 --size=8 --steps=1 --warmup=1   # a smoke run
    python bench/unet_train_step.py --config=configs/inpainting/axial.py --size=256 \
        --peer monai --peer-only --json=/tmp/monai.json   # MONAI alone, the BraTS axial network

`--config` takes the network (`model.*`) from a config file (`path` or `path:variant`)
instead of the reference one, for both sides; `--peer-only` runs MONAI's side alone (no JAX
step; bench/accelerator_check.py compares it with bench/train_memory.py's step); `--json`
also writes the figures to a file. The peer runs on a CUDA device where torch sees one
(synchronising after each step), else on the CPU.

XLA CPU flag. Unless `--no-cpu-flags`, the bench sets (before importing JAX)

    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE

jaxlib 0.10 hands convolutions, dots, reductions and elementwise ops to YNNPACK by default. On
this network its convolutions (weight gradients above all) are slower than XLA's Eigen ones, and
its elementwise fusions split XLA's loop fusions into separate passes, while its reductions are
faster; the flag keeps YNNPACK for reductions only. Trainers on CPU should set the same flag
(`sciimg_jax.core.xla_flags.set_cpu_flags()`), before JAX is imported.

Measured (2 CPU cores, AMD EPYC with AVX-512, a machine shared with other jobs, so +-10%;
jax/jaxlib 0.10.2, torch 2.13 CPU), float32, median ms per step, with the bench's earlier
hand-written step (forward + backward + optax AdamW of an epsilon-MSE loss against random
targets; no noising, clipping or EMA):

  first version (GroupNorm by autodiff, jax.nn.dot_product_attention,
    default XLA flags)                                            1380
  + hand-written GroupNorm(+SiLU) forward/backward (custom_vjp)    ~1400 (with default flags)
  + the YNNPACK flag above (reductions only)                       1100
  + hand-written attention backward (custom_vjp)                   1009  <- the network now
  same code without the flag (--no-cpu-flags)                      1356
  MONAI DiffusionModelUNet, the same step, 2 torch threads          790

  i.e. ours / MONAI = 1.28 on CPU (the command above, quiet machine); measured again later
  the same way: 1046 ms against MONAI's 932 ms, ratio 1.12. Model FLOPs per step (XLA cost
  analysis): 2.082e11, so 199-206 GFLOP/s achieved.

  The trainer's step (what this bench times now), default command, run alternately with the
  hand-written step on the same machine: 1009 and 1022 ms against 1046 and 1051 ms in the
  quiet runs (either took ~1.9-2.1 s while the machine was loaded); 2.083e11 FLOPs per step.
  Noising, clipping and the EMA cost nothing measurable next to the network.

What did not help: --xla_cpu_use_onednn, XNNPACK / oneDNN convolution fusions, fast math,
--xla_cpu_multi_thread_eigen=false, the concurrency-optimized scheduler (all within noise or
slower). Where the rest of the gap lies: the forward pass is as fast as MONAI's (240 vs 290 ms);
the backward is slower, chiefly the convolution weight gradients, for which XLA transposes both
the activations and the output gradients into batch-minor layouts (a profile with
`jax.profiler.trace`: 165 ms a step in `transpose_copy_fusion`). Timed alone, each of our
convolutions (forward, input gradient, weight gradient with its transposes) is as fast as
torch's or faster at every size of this network. Writing the weight gradient by hand (im2col
plus one dot, or one dot per kernel offset, in a custom_vjp) was 1.3-2.5x slower than XLA's.
"""

import argparse
import importlib.util
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sciimg_jax.core import xla_flags  # pylint: disable=g-import-not-at-top  # noqa: E402
import peer  # bench/peer.py  # noqa: E402

# Dense peak FLOP/s by device kind and compute dtype (SXM parts; no sparsity).
PEAK_FLOPS = {
    "H100": {"bfloat16": 989e12, "float32": 67e12},
    "H200": {"bfloat16": 989e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float32": 19.5e12},
}

REFERENCE = dict(spatial_dims=2, in_channels=3, out_channels=1, channels=(32, 64, 128),
                 num_res_blocks=2, attention_levels=(False, False, True), num_head_channels=32,
                 num_groups=8)

PEER_MONAI = peer.TIMING + r"""
import json, os, sys
import numpy as np, torch
from monai.networks.nets import DiffusionModelUNet
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
torch.manual_seed(0)
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
net = a.get("net", dict(in_channels=3, channels=[32, 64, 128],
                        attention_levels=[False, False, True], num_res_blocks=2,
                        num_head_channels=32, norm_num_groups=8))
kw = {k: tuple(v) if isinstance(v, list) else v for k, v in net.items()}
m = DiffusionModelUNet(spatial_dims=2, out_channels=1, **kw).to(dev)
opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=1e-4)
b, s, c = a["batch"], a["size"], net["in_channels"]
x, eps = torch.randn(b, c, s, s, device=dev), torch.randn(b, 1, s, s, device=dev)
t = torch.randint(0, 1000, (b,), device=dev)
def step():
  opt.zero_grad(set_to_none=True)
  loss = (m(x, t) - eps).square().mean()
  loss.backward()
  opt.step()
  if dev.type == "cuda":
    torch.cuda.synchronize()
times = time_steps(step, a["warmup"], a["steps"])
print(json.dumps(dict(params=sum(p.numel() for p in m.parameters()),
                      median_ms=1e3 * float(np.median(times)), min_ms=1e3 * min(times),
                      torch=torch.__version__, device=str(dev),
                      device_name=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu")))
"""


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--size", type=int, default=64, help="slice height and width")
  p.add_argument("--steps", type=int, default=10, help="timed steps")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                 help="compute dtype (parameters stay float32)")
  p.add_argument("--peer", default="none", choices=["none", "monai"])
  p.add_argument("--peer-python", default=sys.executable,
                 help="python with torch and monai, for --peer monai")
  p.add_argument("--no-cpu-flags", action="store_true",
                 help=f"do not add {xla_flags.CPU_FLAGS} to XLA_FLAGS")
  p.add_argument("--config", default="",
                 help="take the network from this config (path[:variant]); default: REFERENCE")
  p.add_argument("--peer-only", action="store_true", help="run the peer alone (no JAX step)")
  p.add_argument("--json", default="", help="also write the figures to this JSON file")
  args = p.parse_args()
  if args.peer_only and args.peer == "none":
    p.error("--peer-only needs --peer monai")
  return args


def network(args):
  """The network's config keys: REFERENCE, or those of `--config`."""
  if not args.config:
    return dict(REFERENCE)
  path, _, variant = args.config.partition(":")
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  from sciimg_jax.core import slice_task  # pylint: disable=g-import-not-at-top
  from sciimg_jax.inpainting import slice_inputs  # pylint: disable=g-import-not-at-top
  c = module.get_config(variant) if variant else module.get_config()
  m = slice_task.with_in_channels(c, slice_inputs.InpaintingSlices()).model
  return {k: tuple(m[k]) if isinstance(m[k], (list, tuple)) else m[k] for k in REFERENCE}


def peer_net(net):
  """`network(args)` in MONAI DiffusionModelUNet's keywords (out_channels is the script's)."""
  return dict(in_channels=net["in_channels"], channels=list(net["channels"]),
              attention_levels=list(net["attention_levels"]),
              num_res_blocks=net["num_res_blocks"], num_head_channels=net["num_head_channels"],
              norm_num_groups=net["num_groups"])


def run_peer(args, threads):
  cfg = dict(batch=args.batch, size=args.size, steps=args.steps, warmup=args.warmup,
             threads=threads, net=peer_net(network(args)))
  return peer.run(args.peer_python, PEER_MONAI, cfg)


class ReferenceTask:
  """A `trainer.Task` with what the train step uses: the slice models' network and loss.

  `create_model` builds `config.model` (the reference U-Net) with `models.create_model`;
  `loss` is `schedules.conditional_denoising_loss`, the loss of the inpainting slice task
  (`core.slice_task.SliceTask.loss` with `inpainting.slice_inputs`), on batches {'target': (B, H, W, 1),
  'cond': (B, H, W, in_channels - 1)}. No data pipeline, no evaluation.
  """

  def __init__(self, config):
    from sciimg_jax.core.diffusion import schedules  # pylint: disable=g-import-not-at-top
    self.config = config
    self.schedule = schedules.schedule_from_config(config.diffusion)

  def create_model(self, rngs, dtype):
    from sciimg_jax.core import models  # pylint: disable=g-import-not-at-top
    return models.create_model(self.config.model, dtype=dtype, rngs=rngs)

  def frozen_params(self, mesh):
    return None

  def loss(self, model, batch, key, frozen):
    from sciimg_jax.core.diffusion import schedules  # pylint: disable=g-import-not-at-top
    loss = schedules.conditional_denoising_loss(
        self.schedule, self.config.diffusion.parameterization, model, batch["target"],
        batch["cond"], key)
    return loss, {}


def bench_config(args):
  """The inpainting base config with the reference network, the bench's batch and dtype."""
  from configs import base  # pylint: disable=g-import-not-at-top
  from configs.inpainting import common  # pylint: disable=g-import-not-at-top
  c = common.get_base_config()
  net = network(args)
  base.set_keys(c, {k: v for k, v in net.items() if k != "in_channels"}, prefix="model.")
  c.model.in_channels = net["in_channels"]  # the slice task's to derive; here the reference's
  base.set_keys(c, {"data.batch_size": args.batch, "data.image_size": (args.size, args.size),
                    "train.compute_dtype": args.dtype})
  return c


def write_json(path, figures):
  if path:
    with open(path, "w") as f:
      json.dump(figures, f, indent=1)


def print_peer(monai, threads, batch, step_s=None):
  print(f"MONAI (torch {monai['torch']}, {monai['device']}, {threads} threads): "
        f"{monai['params']:,} parameters, {monai['median_ms']:.1f} ms/step (min "
        f"{monai['min_ms']:.1f}), {batch / monai['median_ms'] * 1e3:.1f} slices/s")
  if step_s is not None:
    print(f"ratio ours / MONAI: {1e3 * step_s / monai['median_ms']:.2f} "
          f"(< 1 means we are faster)")


def main():
  args = parse_args()
  if args.peer_only:
    monai = run_peer(args, os.cpu_count())
    if monai:
      print_peer(monai, os.cpu_count(), args.batch)
    write_json(args.json, dict(batch=args.batch, size=args.size, monai=monai))
    return
  if not args.no_cpu_flags:
    xla_flags.set_cpu_flags()

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from sciimg_jax.core import precision  # pylint: disable=g-import-not-at-top
  from sciimg_jax.core import sharding  # pylint: disable=g-import-not-at-top
  from sciimg_jax.core import trainer  # pylint: disable=g-import-not-at-top

  config = bench_config(args)
  trainer.check_config(config)
  task = ReferenceTask(config)
  mesh = sharding.make_mesh()
  net, state, tx, lr = trainer.create_train_state(task, config, mesh)
  train_step = trainer.make_train_step(task, net, tx, lr, config.optim.ema_decay, mesh)
  frozen = jax.device_put(task.frozen_params(mesh), sharding.replicated(mesh))
  num_params = sum(p.size for p in jax.tree.leaves(state.params))

  b, s = args.batch, args.size
  rng = np.random.default_rng(0)
  batch = sharding.shard_batch({
      "target": rng.uniform(-1, 1, (b, s, s, 1)).astype(np.float32),
      "cond": rng.uniform(-1, 1, (b, s, s, config.model.in_channels - 1)).astype(np.float32),
  }, mesh)
  key = jax.random.key(config.seed)

  t0 = time.perf_counter()
  compiled = train_step.lower(state, batch, key, frozen).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan")))

  for _ in range(args.warmup):
    state, metrics = train_step(state, batch, key, frozen)
  jax.block_until_ready((state, metrics) if args.warmup else state)
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    state, metrics = train_step(state, batch, key, frozen)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  if not np.isfinite(float(metrics["loss"])):
    print(f"warning: the loss is {float(metrics['loss'])}")

  device = jax.devices()[0]
  threads = os.cpu_count()
  o = config.optim
  print(f"device: {device.platform} {device.device_kind} ({threads} CPUs); jax {jax.__version__}; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"config: 2D U-Net channels {tuple(config.model.channels)}, {s}x{s}, batch {b}, "
        f"dtype {precision.compute_dtype(config).name}; step: trainer.make_train_step "
        f"({config.diffusion.parameterization} loss, clip {o.grad_clip_norm}, AdamW, "
        f"EMA {o.ema_decay}); compiled in {compile_s:.1f} s")
  print(f"parameters:      {num_params:,}")
  print(f"ms/step:         {1e3 * step_s:.1f} (median of {args.steps}; min {1e3 * min(times):.1f})")
  print(f"slices/s:        {b / step_s:.1f}")
  print(f"model FLOPs:     {flops:.3e} per step (XLA cost analysis)")
  print(f"achieved:        {flops / step_s / 1e9:.1f} GFLOP/s")
  if device.platform == "gpu":
    peak = next((v for k, v in PEAK_FLOPS.items() if k in device.device_kind), None)
    if peak:
      print(f"MFU:             {100 * flops / step_s / peak[args.dtype]:.1f}% of "
            f"{peak[args.dtype] / 1e12:.0f} TFLOP/s ({args.dtype} dense peak)")

  monai = run_peer(args, threads) if args.peer == "monai" else None
  if monai:
    print_peer(monai, threads, b, step_s)
  write_json(args.json, dict(batch=b, size=s, dtype=args.dtype, params=int(num_params),
                             median_ms=1e3 * step_s, min_ms=1e3 * min(times), flops=flops,
                             compile_s=compile_s, device_kind=device.device_kind, monai=monai))


if __name__ == "__main__":
  main()
