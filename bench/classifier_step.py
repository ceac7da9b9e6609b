r"""Train-step speed of the IR and RGB patch classifiers, and of the same models in PyTorch.

What is timed is the trainer's own step (`sciimg_jax.core.trainer.make_train_step`: the loss,
its gradient, clipping, AdamW, EMA) for the classifier task's loss (cross-entropy) on one
fixed random batch, with the classifiers of configs/ir/classifier.py: `spectral_spatial`
on `--bands` channels (IR) and `spatial` on 3 (RGB), same trunk; and the per-spectrum models
of configs/ir/spectra.py on batches of single spectra: the MLP (`spectral_pixel`,
bands -> 128 -> 64 -> classes) and the 1D CNN (`spectral_cnn`: three stride-2 convolutions
of width 7 with GroupNorm and GELU, dense, head). Prints ms per step (median of --steps after
--warmup) and examples per second. With `--peer torch` the same networks written in
PyTorch (AdamW, cross-entropy) run in `--peer-python` and the ratio is printed.

    python bench/classifier_step.py                          # 32x32 patches, 400 bands, batch 64
    python bench/classifier_step.py --peer torch --peer-python /tmp/peer/bin/python
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
def trunk(c, size, widths=(32, 64), features=64):
  layers, prev = [], c
  for k, w in enumerate(widths):
    stride = 1 if k == 0 else 2
    layers += [nn.Conv2d(prev, w, 3, stride, 1), nn.GroupNorm(8, w), nn.GELU()]
    prev, size = w, -(-size // stride)
  return nn.Sequential(*layers, nn.Flatten(), nn.Linear(prev * size * size, features), nn.GELU())
def spectral_cnn(bands, widths=(16, 32, 64), length=None):
  layers, prev, length = [], 1, bands
  for w in widths:  # 'SAME' padding with stride 2, as flax: ceil(length / 2)
    layers += [nn.Conv1d(prev, w, 7, 2, 3), nn.GroupNorm(8, w), nn.GELU()]
    prev, length = w, -(-length // 2)
  return nn.Sequential(*layers, nn.Flatten(), nn.Linear(prev * length, 64), nn.GELU(),
                       nn.Linear(64, 5))
models = {
    "ir": lambda: nn.Sequential(nn.Conv2d(a["bands"], 64, 1), nn.GELU(), nn.Conv2d(64, 16, 1),
                                trunk(16, a["size"]), nn.Linear(64, 5)),
    "rgb": lambda: nn.Sequential(trunk(3, a["size"]), nn.Linear(64, 5)),
    "pixel_mlp": lambda: nn.Sequential(nn.Linear(a["bands"], 128), nn.GELU(), nn.Linear(128, 64),
                                       nn.GELU(), nn.Linear(64, 5)),
    "spectral_cnn": lambda: spectral_cnn(a["bands"]),
}
shapes = {"ir": (a["batch"], a["bands"], a["size"], a["size"]),
          "rgb": (a["batch"], 3, a["size"], a["size"]),
          "pixel_mlp": (a["batch"], a["bands"]), "spectral_cnn": (a["batch"], 1, a["bands"])}
out = {}
for name in a["rows"]:
  m = models[name]()
  opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1e-4)
  x = torch.randn(*shapes[name])
  y = torch.randint(0, 5, (a["batch"],))
  def step():
    opt.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(m(x), y).backward()
    opt.step()
  out[name] = 1e3 * float(np.median(time_steps(step, a["warmup"], a["steps"])))
out["torch"] = torch.__version__
print(json.dumps(out))
"""


class RandomBatchTask:
  """The classifier task's loss on a fixed random batch (no data pipeline)."""

  def __init__(self, model_config, channels, num_classes=5, patch_size=32):
    self.model_config, self.channels = model_config, channels
    self.num_classes, self.patch_size = num_classes, patch_size

  def create_model(self, rngs, dtype):
    from sciimg_jax.core import models  # noqa: PLC0415
    return models.create_model(self.model_config, rngs=rngs, dtype=dtype,
                               in_channels=self.channels, num_classes=self.num_classes,
                               patch_size=self.patch_size)

  def frozen_params(self, mesh):
    return None

  def loss(self, model, batch, key, frozen):
    import jax.numpy as jnp  # noqa: PLC0415
    import optax  # noqa: PLC0415
    logits = model(batch["x"]).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean(), {}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--size", type=int, default=32, help="patch height and width")
  p.add_argument("--bands", type=int, default=400)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--rows", default="ir,rgb,pixel_mlp,spectral_cnn",
                 help="ir, rgb (patch models), pixel_mlp, spectral_cnn (one spectrum an example)")
  p.add_argument("--peer", default="none", choices=["none", "torch"])
  p.add_argument("--peer-python", default=sys.executable)
  args = p.parse_args()
  xla_flags.set_cpu_flags()
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from configs.ir import classifier  # noqa: PLC0415
  from configs.ir import spectra  # noqa: PLC0415
  from sciimg_jax.core import sharding  # noqa: PLC0415
  from sciimg_jax.core import trainer  # noqa: PLC0415
  from sciimg_jax.ir import classifiers  # noqa: F401,PLC0415  (registers the models)

  mesh = sharding.make_mesh()
  print(f"JAX {jax.__version__} on {jax.device_count()} {jax.devices()[0].device_kind}; "
        f"{args.size}x{args.size} patches, batch {args.batch}")
  ours = {}
  models = spectra.get_config().models
  rows = {  # name: (model config, input channels, patch size)
      "ir": (classifier.get_config("ir").model, args.bands, args.size),
      "rgb": (classifier.get_config("rgb").model, 3, args.size),
      "pixel_mlp": (models.mlp, args.bands, 1),
      "spectral_cnn": (models.cnn, args.bands, 1),
  }
  for name in args.rows.split(","):
    model, channels, size = rows[name]
    c = classifier.get_config("ir")
    c.model = model
    c.train.num_steps = args.warmup + args.steps
    task = RandomBatchTask(c.model, channels, patch_size=size)
    net, state, tx, lr = trainer.create_train_state(task, c, mesh)
    step = trainer.make_train_step(task, net, tx, lr, c.optim.ema_decay, mesh)
    rng = np.random.default_rng(0)
    batch = sharding.shard_batch({
        "x": rng.normal(size=(args.batch, size, size, channels)).astype(np.float32),
        "label": rng.integers(0, 5, args.batch).astype(np.int32)}, mesh)
    key = jax.random.key(0)
    for _ in range(args.warmup):
      state, metrics = step(state, batch, key, None)
    jax.block_until_ready((state, metrics))
    times = []
    for _ in range(args.steps):
      t0 = time.perf_counter()
      state, metrics = step(state, batch, key, None)
      jax.block_until_ready((state, metrics))
      times.append(time.perf_counter() - t0)
    ours[name] = 1e3 * float(np.median(times))
    print(f"{name} ({c.model.name}, {channels} channels): {ours[name]:.1f} ms/step, "
          f"{args.batch / ours[name] * 1e3:.0f} examples/s")
  if args.peer == "torch":
    theirs = peer.run(args.peer_python, PEER_TORCH, dict(
        batch=args.batch, size=args.size, bands=args.bands, steps=args.steps,
        warmup=args.warmup, threads=os.cpu_count(), rows=args.rows.split(",")))
    if theirs:
      for name in args.rows.split(","):
        print(f"torch {theirs['torch']} {name}: {theirs[name]:.1f} ms/step; ours / torch = "
              f"{ours[name] / theirs[name]:.2f}")


if __name__ == "__main__":
  main()
