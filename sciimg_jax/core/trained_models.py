"""Trained networks for inference: rebuilt from a run's stored config, EMA parameters only.

`load(workdir, mesh)` reads the config stored with the latest checkpoint of a training
run (`trainer.train`), rebuilds the network from its `model` block and restores only the
EMA parameters (no optimiser state, no data-iterator state). `restore(config, mesh)`
without a checkpointer gives the fresh initialisation (benchmarks, tests).
"""

import dataclasses
import pathlib

import jax
import ml_collections
from flax import nnx

from sciimg_jax.core import checkpoint
from sciimg_jax.core import models
from sciimg_jax.core import precision
from sciimg_jax.core import sharding
from sciimg_jax.core.errors import InputError


@dataclasses.dataclass
class Trained:
  """A network, its replicated EMA parameters, the run's config and checkpoint step."""
  config: ml_collections.ConfigDict
  net: models.Network
  params: object
  step: int = 0


def restore(config, mesh, checkpointer=None, step=None, create=None):
  """The network of `config.model` (built by `create(rngs, dtype)` if given) with the EMA
  parameters of `checkpointer`'s latest checkpoint (or `step`), or fresh ones."""
  rngs = nnx.Rngs(params=config.seed, dropout=config.seed + 1)
  dtype = precision.compute_dtype(config)
  module = (create(rngs, dtype) if create is not None
            else models.create_model(config.model, dtype=dtype, rngs=rngs))
  net, params = models.Network.split(module)
  if checkpointer is None:
    return Trained(config, net, jax.device_put(params, sharding.replicated(mesh)))
  step = checkpointer.latest_step() if step is None else step
  params = checkpointer.restore_ema(
      checkpoint.abstract_like(params, sharding.replicated(mesh)), step)
  return Trained(config, net, params, int(step))


def open_run(workdir, hint=""):
  """(Checkpointer, stored config) of the training run in `workdir`; `hint` says how to train it."""
  ckpt_dir = pathlib.Path(workdir) / "checkpoints"
  if not ckpt_dir.is_dir():
    raise InputError(workdir, "no checkpoints/ folder: " + (hint or "train a model there first"))
  ckpt = checkpoint.Checkpointer(ckpt_dir)
  if ckpt.latest_step() is None:
    ckpt.close()
    raise InputError(ckpt_dir, "holds no checkpoint")
  return ckpt, ml_collections.ConfigDict(ckpt.restore_config())


def load(workdir, mesh, *, hint="", check=None, create=None):
  """The trained network of the run in `workdir`.

  `check(config)` may raise InputError for a run that is not the expected kind;
  `create(config, rngs, dtype)` builds the network of tasks for which it is not
  `create_model(config.model)` alone.
  """
  ckpt, config = open_run(workdir, hint)
  try:
    if check is not None:
      check(config)
    build = None if create is None else (lambda rngs, dtype: create(config, rngs, dtype))
    return restore(config, mesh, ckpt, create=build)
  finally:
    ckpt.close()
