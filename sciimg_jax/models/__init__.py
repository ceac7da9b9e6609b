"""Network registry: `create_model(config.model, rngs=...)` builds the named network."""

from flax import nnx

from sciimg_jax.errors import InputError
from sciimg_jax.models.unet import UNet

MODELS = {"unet": UNet}


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
