"""Trained slice models for inference: the network from the run's config, EMA parameters only.

`load_slice_model(workdir, name, mesh)` reads the config stored with the latest
checkpoint of a training run, rebuilds the network from it and restores only the
EMA parameters (`core.trained_models`).
"""

import dataclasses

import jax.numpy as jnp
import ml_collections

from sciimg_jax.core import trained_models
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


def _slice_model(trained, name):
  net = trained.net

  def apply(params, x, cond, t):
    return net(params, jnp.concatenate([x, cond], axis=-1), t).astype(jnp.float32)

  return SliceModel(name=name, axis=volumes.AXES[trained.config.data.axis],
                    config=trained.config, params=trained.params, apply=apply)


def slice_model(config, name, mesh):
  """A SliceModel for the training config `config` with fresh parameters (benchmarks)."""
  return _slice_model(trained_models.restore(config, mesh), name)


def load_slice_model(workdir, name, mesh):
  """The EMA parameters of the latest checkpoint of a training run in `workdir`."""
  def check(config):
    if config.data.axis != name:
      raise InputError(workdir, f"holds a {config.data.axis} model, expected {name}")

  hint = (f"train the {name} model there first "
          f"(python main.py --config=configs/inpainting/{name}.py --workdir={workdir})")
  return _slice_model(trained_models.load(workdir, mesh, hint=hint, check=check), name)
