"""Network registry and the functional view of a Flax NNX module.

`create_model(config.model, rngs=...)` builds the network named by `config.model.name`
from the other keys of the block. `Network.split(module)` turns a module into a
static `Network` (graph definition and non-parameter state) and its parameters, so
jitted code calls `net(params, *inputs)`: a pure function of the parameters.
"""

import dataclasses

from flax import nnx

from sciimg_jax.core.errors import InputError
from sciimg_jax.core.models.unet import UNet

MODELS = {"unet": UNet}


def register(name, constructor):
  """Adds a network to the registry (a method package registers its own at import)."""
  if MODELS.get(name, constructor) is not constructor:
    raise ValueError(f"model {name!r} is registered already")
  MODELS[name] = constructor


def create_model(model_config, *, rngs: nnx.Rngs, **overrides) -> nnx.Module:
  """Builds `MODELS[model_config.name]` from the other keys of the config block.

  `overrides` (for example `dtype=jnp.bfloat16`, the compute dtype chosen by the trainer) are
  passed as extra keyword arguments and take precedence over the config.
  """
  cfg = dict(model_config)
  name = cfg.pop("name", None)
  if name not in MODELS:
    raise InputError("model.name", f"unknown model {name!r}; known: {sorted(MODELS)}")
  cfg.update(overrides)
  try:
    return MODELS[name](**cfg, rngs=rngs)
  except TypeError as e:  # an unknown or missing keyword in the config block
    raise InputError("model", f"bad arguments for {name!r}: {e}") from e


@dataclasses.dataclass(frozen=True, eq=False)
class Network:
  """A Flax NNX module as a pure function of its parameters: `net(params, *inputs)`.

  `rest` is the module's non-parameter state (its RNG streams); dropout is active
  only with `train=True`.
  """
  graphdef: nnx.GraphDef
  rest: nnx.State

  @classmethod
  def split(cls, module):
    """(Network, params) of an NNX module."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    return cls(graphdef, rest), params

  def module(self, params, train=False):
    """The module with `params`, in train or eval mode (its own copy of every Variable)."""
    model = nnx.merge(self.graphdef, params, self.rest, copy=True)
    model.train() if train else model.eval()
    return model

  def __call__(self, params, *inputs, train=False):
    return self.module(params, train)(*inputs)

  def reseeded(self, params, dropout_key):
    """The same network with its dropout stream reset to `dropout_key` (per step)."""
    model = self.module(params)
    nnx.reseed(model, dropout=dropout_key)
    return Network.split(model)[0]
