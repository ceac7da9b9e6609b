"""Defaults every job shares: the job's name, the seed and what the trainer reads
(`data.batch_size`, `optim`, `train`).

A method's config files start from its own shared file, which adds the blocks its jobs
read: `configs/diffusion.py` (the slice models' data, network, chain and sampling) under
`configs/inpainting/common.py` and `configs/ensembler/common.py`; `configs/ir/classifier.py`
for the IR jobs. No file deletes a key it was given.

Variants (`configs/<job>.py:<variant>` on the command line) are data: a dict of
dotted config keys and their values, applied by `apply_variant`.
"""

import ml_collections


def get_base_config():
  c = ml_collections.ConfigDict()
  c.job = ""                     # set by each job file (a key of sciimg_jax.jobs.JOBS)
  c.seed = 0

  # Data: each method adds its own keys to the block.
  c.data = ml_collections.ConfigDict()
  c.data.batch_size = 16         # the global batch, split over the devices

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-4
  c.optim.warmup_steps = 500
  c.optim.end_lr_factor = 0.01
  c.optim.weight_decay = 1e-4
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.grad_clip_norm = 1.0
  c.optim.ema_decay = 0.999
  c.optim.ema_start = 0          # the EMA is the parameters before this step
  c.optim.ema_every = 1          # and moves (by ema_decay) after every this many steps
  # Gradient accumulation: each step splits its batch into this many micro-batches, takes
  # their gradients one after another (a lax.scan in trainer.make_train_step) and makes one
  # update with their mean; less activation memory, the same update as the whole batch.
  c.optim.accumulate_steps = 1

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 100_000
  c.train.compute_dtype = "auto"     # auto: bfloat16 on GPU/TPU, float32 on CPU
  c.train.log_every = 100
  c.train.checkpoint_every = 5_000
  c.train.max_checkpoints = 3
  c.train.eval_every = 10_000        # the task's evaluation; 0 = never
  c.train.progress_bar = True
  return c


# Seconds-scale training for tests (a method's TINY adds its data and network sizes).
TINY = {
    "optim.warmup_steps": 2,
    "train.num_steps": 4, "train.compute_dtype": "float32", "train.log_every": 2,
    "train.checkpoint_every": 2, "train.eval_every": 4, "train.progress_bar": False,
}


def set_keys(c, values, prefix=""):
  """Sets `c[prefix + key] = value` for the dotted keys of `values`; returns c."""
  for dotted, value in values.items():
    *path, last = (prefix + dotted).split(".")
    node = c
    for name in path:
      node = node[name]
    if last not in node:
      raise KeyError(f"variant sets unknown config key {prefix + dotted!r}")
    node[last] = value
  return c


def apply_variant(c, variant, variants):
  """Applies `variants[variant]` (dotted keys -> values) to `c`; '' applies nothing.

  'a+b' applies variant a, then b.
  """
  for name in filter(None, variant.split("+")):
    if name not in variants:
      raise ValueError(f"unknown config variant {name!r}; known: {', '.join(variants)}")
    set_keys(c, variants[name])
  return c
