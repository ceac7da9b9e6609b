"""Trained slice models for inference: the network from the run's config, EMA parameters only.

`load_slice_model(workdir, name, mesh)` reads the config stored with the latest
checkpoint of a training run, rebuilds the network from it and restores only the
EMA parameters (no optimiser state, no data-iterator state).
"""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from sciimg_jax.core import checkpoint
from sciimg_jax.core import models
from sciimg_jax.core import sharding
from sciimg_jax.core import trainer
from sciimg_jax.core import volumes
from sciimg_jax.core.errors import InputError


@dataclasses.dataclass
class SliceModel:
  """A trained 2D (x_t, conditions) -> epsilon model and what it was trained with."""
  name: str
  axis: int
  config: ml_collections.ConfigDict
  params: object
  apply: object  # (params, x, cond, t) -> model output, float32

  @property
  def image_size(self):
    return tuple(self.config.data.image_size)


def slice_model(config, name, mesh, checkpointer=None):
  """A SliceModel for the training config `config`: EMA parameters restored from the
  latest checkpoint of `checkpointer`, or the fresh initialisation (benchmarks)."""
  module = models.create_model(config.model, dtype=trainer.compute_dtype(config),
                               rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1))
  net, params = models.Network.split(module)
  if checkpointer is None:
    params = jax.device_put(params, sharding.replicated(mesh))
  else:
    params = checkpointer.restore_ema(checkpoint.abstract_like(params, sharding.replicated(mesh)))

  def apply(params, x, cond, t):
    return net(params, jnp.concatenate([x, cond], axis=-1), t).astype(jnp.float32)

  return SliceModel(name=name, axis=volumes.AXES[config.data.axis], config=config,
                    params=params, apply=apply)


def load_slice_model(workdir, name, mesh):
  """The EMA parameters of the latest checkpoint of a training run in `workdir`."""
  ckpt_dir = pathlib.Path(workdir) / "checkpoints"
  if not ckpt_dir.is_dir():
    raise InputError(workdir, f"no checkpoints/ folder: train the {name} model there first "
                     f"(python main.py --config=configs/inpainting/{name}.py --workdir={workdir})")
  ckpt = checkpoint.Checkpointer(ckpt_dir)
  if ckpt.latest_step() is None:
    raise InputError(ckpt_dir, "holds no checkpoint")
  config = ml_collections.ConfigDict(ckpt.restore_config())
  if config.data.axis != name:
    raise InputError(workdir, f"holds a {config.data.axis} model, expected {name}")
  model = slice_model(config, name, mesh, ckpt)
  ckpt.close()
  return model
