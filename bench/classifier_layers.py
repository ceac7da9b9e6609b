r"""Where the RGB patch classifier's train step goes: each layer's forward and backward alone.

The layers of `spatial` (configs/ir/classifier.py:rgb) at 32x32, batch 64: 3x3 conv 3 -> 32,
GroupNorm + GELU, 3x3 stride-2 conv 32 -> 64, GroupNorm + GELU, dense 16,384 -> 64; each
jitted alone with `loss = sum(layer(x)^2)`, forward and forward + backward (gradients of the
weights and the input), median ms. With `--peer-python` the same layers in PyTorch.

    python bench/classifier_layers.py --peer-python /path/to/torch/python
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sciimg_jax.core import xla_flags  # noqa: E402
import peer  # bench/peer.py  # noqa: E402

PEER_TORCH = peer.TIMING + r"""
import json, sys
import numpy as np, torch
from torch import nn
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
torch.manual_seed(0)
x = torch.randn(64, 3, 32, 32)
conv1, gn1 = nn.Conv2d(3, 32, 3, 1, 1), nn.GroupNorm(8, 32)
conv2, gn2 = nn.Conv2d(32, 64, 3, 2, 1), nn.GroupNorm(8, 64)
dense = nn.Linear(64 * 16 * 16, 64)
with torch.no_grad():
  c1 = conv1(x); h1 = nn.functional.gelu(gn1(c1)); c2 = conv2(h1)
  f = nn.functional.gelu(gn2(c2)).flatten(1)
out = {}
for name, mod, inp, act in (("conv1", conv1, x, False), ("gn1+gelu", gn1, c1, True),
                            ("conv2", conv2, h1, False), ("gn2+gelu", gn2, c2, True),
                            ("dense", dense, f, False)):
  inp = inp.clone().requires_grad_(True)
  def loss():
    y = mod(inp)
    return ((nn.functional.gelu(y) if act else y) ** 2).sum()
  def fwd():
    with torch.no_grad():
      loss()
  def both():
    mod.zero_grad(set_to_none=True)
    inp.grad = None
    loss().backward()
  out[name] = [1e3 * float(np.median(time_steps(f_, 3, a["steps"]))) for f_ in (fwd, both)]
print(json.dumps(out))
"""


def ours(steps):
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415
  r = nnx.Rngs(0)
  x = jax.numpy.asarray(np.random.default_rng(0).normal(size=(64, 32, 32, 3)).astype(np.float32))
  conv1, gn1 = nnx.Conv(3, 32, (3, 3), rngs=r), nnx.GroupNorm(32, num_groups=8, rngs=r)
  conv2 = nnx.Conv(32, 64, (3, 3), strides=(2, 2), rngs=r)
  gn2 = nnx.GroupNorm(64, num_groups=8, rngs=r)
  dense = nnx.Linear(64 * 16 * 16, 64, rngs=r)
  c1 = conv1(x)
  h1 = nnx.gelu(gn1(c1))
  c2 = conv2(h1)
  f = nnx.gelu(gn2(c2)).reshape(64, -1)
  out = {}
  for name, mod, inp, act in (("conv1", conv1, x, False), ("gn1+gelu", gn1, c1, True),
                              ("conv2", conv2, h1, False), ("gn2+gelu", gn2, c2, True),
                              ("dense", dense, f, False)):
    graph, params = nnx.split(mod)

    def loss(params, inp, graph=graph, act=act):
      y = nnx.merge(graph, params)(inp)
      return ((nnx.gelu(y) if act else y) ** 2).sum()

    times = []
    for fn in (jax.jit(loss), jax.jit(jax.grad(loss, argnums=(0, 1)))):
      def call(fn=fn):
        jax.block_until_ready(fn(params, inp))
      times.append(1e3 * float(np.median(peer.time_steps(call, 3, steps))))
    out[name] = times
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--peer-python", default="", help="a python with torch")
  args = p.parse_args()
  xla_flags.set_cpu_flags()
  mine = ours(args.steps)
  theirs = (peer.run(args.peer_python, PEER_TORCH, dict(steps=args.steps,
                                                         threads=os.cpu_count()))
            if args.peer_python else None)
  print("| layer | ours fwd / fwd+bwd (ms) | torch fwd / fwd+bwd (ms) |")
  print("| --- | --- | --- |")
  for name, (fwd, both) in mine.items():
    other = f"{theirs[name][0]:.1f} / {theirs[name][1]:.1f}" if theirs else ""
    print(f"| {name} | {fwd:.1f} / {both:.1f} | {other} |")


if __name__ == "__main__":
  main()
