r"""Train-step speed of the diffusion U-Net, and of MONAI's `DiffusionModelUNet` beside it.

For the reference config (2D, in 3 / out 1, channels (32, 64, 128), two residual blocks per level,
attention at the last level, 32 channels per head, 8 groups; 3,939,969 parameters) on 64x64
slices, batch 16: one step is forward + backward + optax AdamW update of an epsilon-MSE loss
against random targets. Prints the parameter count, ms per step (median over --steps steps after
--warmup, each timed with block_until_ready; the minimum too), slices/s, the model FLOPs of one
step from XLA's cost analysis, achieved FLOP/s, and on GPU the MFU against the chip's dense peak
for the compute dtype. With `--peer monai` the same step of MONAI's network (same config, batch,
AdamW, epsilon-MSE loss, `torch.set_num_threads` = our CPU count) runs in a subprocess with
`--peer-python`, and the ratio is printed.

    python bench/unet_train_step.py --peer monai --peer-python /tmp/peer/bin/python

XLA CPU flag. Unless `--no-cpu-flags`, the bench sets (before importing JAX)

    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE

jaxlib 0.10 hands convolutions, dots, reductions and elementwise ops to YNNPACK by default. On
this network its convolutions (weight gradients above all) are slower than XLA's Eigen ones, and
its elementwise fusions split XLA's loop fusions into separate passes, while its reductions are
faster; the flag keeps YNNPACK for reductions only. Trainers on CPU should set the same flag
(`sciimg_jax.xla_flags.set_cpu_flags()`), before JAX is imported.

Measured (2 CPU cores, AMD EPYC with AVX-512, a machine shared with other jobs, so +-10%;
jax/jaxlib 0.10.2, torch 2.13 CPU), float32, median ms per step:

  first version (GroupNorm by autodiff, jax.nn.dot_product_attention,
    default XLA flags)                                            1380
  + hand-written GroupNorm(+SiLU) forward/backward (custom_vjp)    ~1400 (with default flags)
  + the YNNPACK flag above (reductions only)                       1100
  + hand-written attention backward (custom_vjp)                   1009  <- this code
  same code without the flag (--no-cpu-flags)                      1356
  MONAI DiffusionModelUNet, same step, 2 torch threads              790

  i.e. ours / MONAI = 1.28 on CPU (the command above, quiet machine); measured again later
  the same way: 1046 ms against MONAI's 932 ms, ratio 1.12. Model FLOPs per step (XLA cost
  analysis): 2.082e11, so 199-206 GFLOP/s achieved.

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
import json
import os
import subprocess
import sys
import time

from sciimg_jax.core import xla_flags

# Dense peak FLOP/s by device kind and compute dtype (SXM parts; no sparsity).
PEAK_FLOPS = {
    "H100": {"bfloat16": 989e12, "float32": 67e12},
    "H200": {"bfloat16": 989e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float32": 19.5e12},
}

REFERENCE = dict(spatial_dims=2, in_channels=3, out_channels=1, channels=(32, 64, 128),
                 num_res_blocks=2, attention_levels=(False, False, True), num_head_channels=32,
                 num_groups=8)

PEER_MONAI = r"""
import json, os, sys, time
import numpy as np, torch
from monai.networks.nets import DiffusionModelUNet
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
torch.manual_seed(0)
m = DiffusionModelUNet(spatial_dims=2, in_channels=3, out_channels=1, channels=(32, 64, 128),
                       attention_levels=(False, False, True), num_res_blocks=2,
                       num_head_channels=32, norm_num_groups=8)
opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=1e-4)
b, s = a["batch"], a["size"]
x, eps = torch.randn(b, 3, s, s), torch.randn(b, 1, s, s)
t = torch.randint(0, 1000, (b,))
def step():
  opt.zero_grad(set_to_none=True)
  loss = (m(x, t) - eps).square().mean()
  loss.backward()
  opt.step()
for _ in range(a["warmup"]):
  step()
times = []
for _ in range(a["steps"]):
  t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
print(json.dumps(dict(params=sum(p.numel() for p in m.parameters()),
                      median_ms=1e3 * float(np.median(times)), min_ms=1e3 * min(times),
                      torch=torch.__version__)))
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
  return p.parse_args()


def run_peer(args, threads):
  cfg = dict(batch=args.batch, size=args.size, steps=args.steps, warmup=args.warmup,
             threads=threads)
  try:
    out = subprocess.run([args.peer_python, "-c", PEER_MONAI, json.dumps(cfg)], check=True,
                         capture_output=True, text=True)
  except (subprocess.CalledProcessError, OSError) as e:
    err = getattr(e, "stderr", "") or str(e)
    print(f"peer monai: could not run with {args.peer_python}: {err.strip().splitlines()[-1:]}")
    return None
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  args = parse_args()
  if not args.no_cpu_flags:
    xla_flags.set_cpu_flags()

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from sciimg_jax.core.models.unet import UNet  # pylint: disable=g-import-not-at-top

  dtype = jnp.dtype(args.dtype)
  model = UNet(**REFERENCE, dtype=dtype, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  num_params = sum(p.size for p in jax.tree.leaves(params))
  tx = optax.adamw(1e-4, weight_decay=1e-4)
  opt_state = tx.init(params)

  def train_step(params, opt_state, x, t, eps):
    def loss_fn(params):
      out = nnx.merge(graphdef, params, rest)(x, t)
      return jnp.mean(jnp.square(out - eps))
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  b, s = args.batch, args.size
  x = jax.random.normal(k1, (b, s, s, 3))
  eps = jax.random.normal(k2, (b, s, s, 1))
  t = jax.random.randint(k3, (b,), 0, 1000)

  compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(
      params, opt_state, x, t, eps).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan")))

  for _ in range(args.warmup):
    params, opt_state, loss = compiled(params, opt_state, x, t, eps)
  jax.block_until_ready(loss)
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    params, opt_state, loss = compiled(params, opt_state, x, t, eps)
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))

  device = jax.devices()[0]
  threads = os.cpu_count()
  print(f"device: {device.platform} {device.device_kind} ({threads} CPUs); jax {jax.__version__}; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"config: 2D U-Net channels (32, 64, 128), {args.size}x{args.size}, batch {b}, "
        f"dtype {args.dtype}")
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

  if args.peer == "monai":
    peer = run_peer(args, threads)
    if peer:
      print(f"MONAI (torch {peer['torch']}, {threads} threads): {peer['params']:,} parameters, "
            f"{peer['median_ms']:.1f} ms/step (min {peer['min_ms']:.1f}), "
            f"{b / peer['median_ms'] * 1e3:.1f} slices/s")
      print(f"ratio ours / MONAI: {1e3 * step_s / peer['median_ms']:.2f} "
            f"(< 1 means we are faster)")


if __name__ == "__main__":
  main()
